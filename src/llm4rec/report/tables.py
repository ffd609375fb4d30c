"""Summary tables for `snakemake --report`: per-run records, the summary over seeds, the
methods table with its Wilcoxon column, and their HTML.

Variants (`{variant}-s{seed}/`) and baselines (`baselines/{name}/`, `baselines/multivae-s{seed}/`)
write the same `metrics.json` and `per_user.parquet`, so one code path summarizes both. Nothing
here imports torch or matplotlib: every Snakemake start reads the report package.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from llm4rec.core.constants import METRICS


@dataclass
class RunRecord:
    """One evaluated run: a variant replicate or a baseline (seed None when deterministic)."""

    method: str
    kind: str  # "variant" or "baseline"
    seed: int | None
    run_dir: Path
    benchmarks: list[Path] = field(default_factory=list)


def benchmark_seconds(paths: Iterable[str | Path]) -> float:
    """Wall-clock seconds of a method: the sum of its rules' Snakemake benchmark `s` columns.

    A benchmark file holds one row per repeat; the last row is used. NaN when any file is
    missing (a run copied in without its benchmarks), so a partial sum never passes as a time.
    """
    total = 0.0
    paths = list(paths)
    if not paths:
        return math.nan
    for p in paths:
        p = Path(p)
        if not p.is_file():
            return math.nan
        total += float(pd.read_csv(p, sep="\t")["s"].iloc[-1])
    return total


def summary_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per method and seed: test metrics, test users, validation metrics, epoch, seconds."""
    rows = []
    for r in records:
        m = json.loads((Path(r.run_dir) / "metrics.json").read_text())
        rows.append(
            {
                "method": r.method,
                "kind": r.kind,
                "seed": r.seed,
                **{k: float(m["test"][k]) for k in METRICS},
                "users": int(m["test"]["users"]),
                **{f"val_{k}": float(m["val"][k]) for k in METRICS},
                "epoch": m.get("epoch"),
                "seconds": benchmark_seconds(r.benchmarks),
                "run": str(r.run_dir),
            }
        )
    cols = ["method", "kind", "seed", *METRICS, "users", *(f"val_{k}" for k in METRICS), "epoch", "seconds", "run"]
    out = pd.DataFrame(rows, columns=cols)
    out["seed"] = out["seed"].astype("Int64")
    out["epoch"] = out["epoch"].astype("Int64")
    return out


def method_table(summary: pd.DataFrame, wilcoxon: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean and spread (sample standard deviation over seeds; NaN for one seed) per method.

    Methods keep their first-appearance order in ``summary``; ``wilcoxon`` (from
    :func:`paired_wilcoxon`) adds its p-value and mean difference, empty for the reference.
    """
    order = list(dict.fromkeys(summary["method"]))
    g = summary.groupby("method", sort=False)
    out = pd.DataFrame({"method": order})
    out["kind"] = [g.get_group(m)["kind"].iloc[0] for m in order]
    out["n_seeds"] = [int(len(g.get_group(m))) for m in order]
    for col in (*METRICS, "seconds"):
        out[f"{col}_mean"] = [float(g.get_group(m)[col].mean()) for m in order]
        out[f"{col}_std"] = [
            float(g.get_group(m)[col].std(ddof=1)) if len(g.get_group(m)) > 1 else math.nan for m in order
        ]
    if wilcoxon is not None and len(wilcoxon):
        w = wilcoxon.set_index("method")
        out["wilcoxon_reference"] = w["reference"].iloc[0]
        out["wilcoxon_metric"] = w["metric"].iloc[0]
        out["wilcoxon_mean_diff"] = out["method"].map(w["mean_diff"])
        out["wilcoxon_n_users"] = out["method"].map(w["n_users"]).astype("Int64")
        out["wilcoxon_p"] = out["method"].map(w["p_value"])
    return out


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_table(methods: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """The methods table as strings for people: mean ± std, seconds, p-value."""
    out = pd.DataFrame({"method": methods["method"], "seeds": methods["n_seeds"]})
    for k in METRICS:
        out[k] = [_fmt(m, s, digits) for m, s in zip(methods[f"{k}_mean"], methods[f"{k}_std"])]
    out["time (s)"] = [_fmt(m, s, 1) for m, s in zip(methods["seconds_mean"], methods["seconds_std"])]
    if "wilcoxon_p" in methods:
        ref, metric = methods["wilcoxon_reference"].iloc[0], methods["wilcoxon_metric"].iloc[0]
        out[f"p ({metric} vs {ref})"] = ["" if pd.isna(p) else f"{p:.3g}" for p in methods["wilcoxon_p"]]
    return out


def table_html(df: pd.DataFrame, title: str, note: str = "") -> str:
    """A small standalone HTML page with one table (a report item shown in an iframe)."""
    body = df.to_html(index=False, na_rep="", border=0, classes="t", escape=True)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;font-size:14px;margin:1em}"
        "table.t{border-collapse:collapse}table.t td,table.t th{padding:4px 8px;border-bottom:1px solid #ccc;"
        "text-align:right}table.t td:first-child,table.t th:first-child{text-align:left}</style></head><body>"
        f"<h3>{html.escape(title)}</h3>{body}" + (f"<p>{html.escape(note)}</p>" if note else "") + "</body></html>\n"
    )
