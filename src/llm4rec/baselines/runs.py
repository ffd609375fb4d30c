"""Run one baseline end to end, with the same outputs as an evaluated variant.

A baseline run writes what `llm4rec.train.evaluate` writes for a variant, so that the
summary and the report treat both alike: ``metrics.json`` ({"test": {...}, "val": {...},
"epoch": ...}), ``per_user.parquet`` (uid, n_targets, one column per metric),
``recommendations.parquet`` (uid, rank, iid, score) and, in addition, ``history.csv``
(the validation rows the model was selected on).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from llm4rec.baselines.ease import fit_ease_grid
from llm4rec.baselines.itemknn import ItemKNN
from llm4rec.baselines.multivae import train_multivae
from llm4rec.baselines.popularity import Popularity
from llm4rec.core.constants import METRICS
from llm4rec.core.logs import readable
from llm4rec.data.preprocess import load_processed, write_recommendations
from llm4rec.metrics import RankingEvaluator, selection_score

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("popularity", "itemknn", "ease", "multivae")


@dataclass
class BaselineRun:
    """Everything one baseline run writes."""

    metrics: dict[str, Any]
    per_user: pd.DataFrame
    recommendations: pd.DataFrame
    history: pd.DataFrame


def load_splits(processed: str | Path) -> dict:
    """Train/val/test user x item matrices of a `processed/` folder (docs/method.md 2.6, 8)."""
    return load_processed(processed).matrices


def _val_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in METRICS}


def run_baseline(
    name: str,
    matrices: dict,
    settings: dict[str, Any] | None = None,
    seed: int = 0,
    top_k: int = 100,
    batch_size: int = 1024,
) -> BaselineRun:
    """Fit ``name`` on train only, select on validation where it has a choice, test once.

    ``settings`` is the baseline's block of config ``baselines`` (e.g. ``{"lambdas": [...]}``
    for EASE); ``seed`` only matters for Multi-VAE (the others are deterministic).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
    s = dict(settings or {})
    train, val, test = matrices["train"], matrices["val"], matrices["test"]
    epoch: int | None = None
    t0 = time.perf_counter()
    if name == "ease":
        model, grid = fit_ease_grid(
            train,
            val,
            batch_size=batch_size,
            **{k: s[k] for k in ("lambdas", "max_memory_gb") if k in s},
        )
        history = pd.DataFrame(grid)
        best = int(np.argmax(history["selection"].to_numpy()))  # first maximum, as fit_ease_grid
        val_metrics = _val_metrics(history.iloc[best].to_dict())
        extra = {"lambda": float(model.l2)}
        log.info("EASE: lambda %g chosen on validation", model.l2)
        score_fn = model.score
    elif name == "multivae":
        res = train_multivae(
            train,
            val,
            seed=seed,
            eval_batch_size=batch_size,
            **{
                k: s[k]
                for k in ("epochs", "patience", "batch_size", "lr", "anneal_cap", "total_anneal_steps", "eval_every")
                if k in s
            },
        )
        history = pd.DataFrame(res.history)
        epoch = int(res.best_epoch)
        val_metrics = _val_metrics(history.loc[history["epoch"] == epoch].iloc[0].to_dict())
        extra = {"epochs_run": int(res.epochs_run)}
        log.info("Multi-VAE: best epoch %d of %d run", epoch, res.epochs_run)
        score_fn = res.score
    else:
        model = (Popularity() if name == "popularity" else ItemKNN(k_neighbors=s.get("k_neighbors"))).fit(train)
        val_res = RankingEvaluator(train, val, batch_size=batch_size).evaluate(model.score)
        val_metrics = _val_metrics(val_res.metrics)
        log.info("%s: fit and validation in %.1f s: %s", name, time.perf_counter() - t0, readable(val_metrics))
        history = pd.DataFrame([{**val_metrics, "selection": selection_score(val_metrics)}])
        extra = {"k_neighbors": s.get("k_neighbors")} if name == "itemknn" else {}
        score_fn = model.score
    t1 = time.perf_counter()
    with torch.no_grad():
        res_test = RankingEvaluator(train, test, batch_size=batch_size).evaluate(score_fn, top_n=top_k)
    log.info("%s: test evaluation in %.1f s (%.1f s in all)", name, time.perf_counter() - t1, time.perf_counter() - t0)
    test_metrics = {**{k: float(res_test.metrics[k]) for k in METRICS}, "users": int(res_test.metrics["users"])}
    log.info("%s: test (%d users): %s", name, test_metrics["users"], readable({k: test_metrics[k] for k in METRICS}))
    metrics = {"test": test_metrics, "val": val_metrics, "epoch": epoch, "baseline": name, **extra}
    if name == "multivae":
        metrics["seed"] = int(seed)
    return BaselineRun(metrics, res_test.per_user, res_test.top_k, history)


def write_baseline_run(
    run: BaselineRun,
    metrics: Path,
    per_user: Path,
    recommendations: Path,
    history: Path,
    processed: Path | None = None,
) -> None:
    """Write a run's files (the layout of an evaluated variant, plus history.csv); with ``processed``
    the recommendations are stamped with that data's fingerprint, as an evaluated variant's are."""
    for p in (metrics, per_user, recommendations, history):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics).write_text(json.dumps(run.metrics, indent=2) + "\n")
    run.per_user.to_parquet(per_user, index=False)
    if processed is None:
        run.recommendations.to_parquet(recommendations, index=False)
    else:
        write_recommendations(run.recommendations, recommendations, processed)
    run.history.to_csv(history, index=False)
