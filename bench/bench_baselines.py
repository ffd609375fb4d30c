"""Wall time of every classical baseline on Amazon Beauty: fit, validation, test (issue 11).

Runs `llm4rec.baselines.runs.run_baseline` as the `baseline` / `multivae` rules do, on a
processed folder (the workflow's `results/beauty/processed`), with the `baselines` block
and `evaluate` settings of config.yaml (``--set`` overrides one setting), at the rules'
thread count. Prints one table row per baseline and, with ``--out``, writes the rows as JSON.

    .venv/bin/python bench/bench_baselines.py --processed results/beauty/processed --log bench.log
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

from llm4rec.baselines.runs import BASELINES, load_splits, run_baseline
from llm4rec.core.constants import METRICS

ROOT = Path(__file__).resolve().parent.parent


def _parse_set(items: list[str]) -> dict[str, dict]:
    """``multivae.eval_every=5`` -> {"multivae": {"eval_every": 5}} (values parsed as YAML)."""
    out: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        name, _, setting = key.partition(".")
        if not setting:
            raise SystemExit(f"--set {item!r}: expected baseline.setting=value")
        out.setdefault(name, {})[setting] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processed", default=str(ROOT / "results/beauty/processed"))
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=BASELINES)
    ap.add_argument("--set", nargs="*", default=[], metavar="BASELINE.KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the rules declare 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", help="also write the baselines' progress lines here")
    ap.add_argument("--out", help="JSON file for the rows")
    args = ap.parse_args()

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log:
        handlers.append(logging.FileHandler(args.log))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    overrides = _parse_set(args.set)
    t0 = time.perf_counter()
    matrices = load_splits(args.processed)
    print(
        f"loaded {args.processed} in {time.perf_counter() - t0:.1f} s: "
        f"{matrices['train'].shape[0]} users x {matrices['train'].shape[1]} items",
        flush=True,
    )

    rows = []
    for name in args.baselines:
        settings = {**config["baselines"].get(name, {}), **overrides.get(name, {})}
        w, c = time.perf_counter(), time.process_time()
        run = run_baseline(
            name,
            matrices,
            settings,
            seed=args.seed,
            top_k=config["evaluate"]["top_k"],
            batch_size=config["evaluate"]["batch_size"],
        )
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        m = run.metrics
        extra = {k: m[k] for k in ("lambda", "epoch", "epochs_run") if m.get(k) is not None}
        rows.append(
            {
                "baseline": name,
                "settings": settings,
                "minutes": wall / 60,
                "cpu_minutes": cpu / 60,
                "val": m["val"],
                "test": m["test"],
                **extra,
            }
        )
        print(f"{name}: {wall / 60:.2f} min ({cpu / 60:.2f} CPU min) {extra}", flush=True)

    print(f"\ntorch threads {args.threads}, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")
    cols = [f"val {k}" for k in METRICS] + [f"test {k}" for k in METRICS]
    print("| baseline | min | CPU min | " + " | ".join(cols) + " | chosen |")
    print("|" + " --- |" * (len(cols) + 4))
    for r in rows:
        vals = [r["val"][k] for k in METRICS] + [r["test"][k] for k in METRICS]
        chosen = ", ".join(f"{k} {r[k]}" for k in ("lambda", "epoch", "epochs_run") if k in r)
        print(
            f"| {r['baseline']} | {r['minutes']:.2f} | {r['cpu_minutes']:.2f} | "
            + " | ".join(f"{v:.4f}" for v in vals)
            + f" | {chosen} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
