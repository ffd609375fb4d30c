"""Test metrics of runs from different datasets or checkouts on one split, and a paired
Wilcoxon test of each against the first (issue 23: titles against the attribute file alone).

The workflow's summary compares the methods of one dataset; the with/without-text comparison
pairs two datasets that share their split (`beauty`, `beauty_notext`). Each method is given as
`name=run_folder[,run_folder...]` (one folder per seed, each holding `metrics.json` and
`per_user.parquet`); per-user test Recall@20 is averaged over a method's seeds before pairing,
as in the report.

    .venv/bin/python bench/paired_runs.py \
        titles=results/beauty/full-s0,results/beauty/full-s1 \
        notext=results/beauty_notext/full-s0,results/beauty_notext/full-s1 \
        EASE=results/beauty/baselines/ease
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from llm4rec.report.stats import paired_wilcoxon

METRICS = ("Recall@20", "Recall@40", "NDCG@100")


def method_rows(runs: dict[str, list[Path]], metric: str = "Recall@20") -> pd.DataFrame:
    """Mean +- sample sd over each method's seeds, per-seed values, and p against the first."""
    per_user = {name: [pd.read_parquet(d / "per_user.parquet") for d in dirs] for name, dirs in runs.items()}
    first = next(iter(runs))
    tests = paired_wilcoxon(per_user, reference=first, metric=metric).set_index("method")
    rows = []
    for name, dirs in runs.items():
        values = pd.DataFrame([json.loads((d / "metrics.json").read_text())["test"] for d in dirs])
        row = {"method": name, "seeds": len(dirs)}
        for m in METRICS:
            col = values[m].to_numpy(dtype=float)
            sd = f" +- {np.std(col, ddof=1):.4f}" if len(col) > 1 else ""
            row[m] = f"{col.mean():.4f}{sd}"
            row[f"{m} per seed"] = " / ".join(f"{v:.4f}" for v in col)
        if name in tests.index:
            t = tests.loc[name]
            row[f"p vs {first}"] = f"{t['p_value']:.2g}"
            row["users (nonzero)"] = f"{t['n_users']} ({t['n_nonzero']})"
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metric", default="Recall@20", help="per-user metric of the paired test")
    ap.add_argument("methods", nargs="+", help="name=run_folder[,run_folder...]")
    args = ap.parse_args()
    runs = {}
    for spec in args.methods:
        name, _, folders = spec.partition("=")
        if not folders:
            raise SystemExit(f"expected name=run_folder[,...], got {spec!r}")
        runs[name] = [Path(f) for f in folders.split(",")]
    print(method_rows(runs, args.metric).fillna("").to_markdown())


if __name__ == "__main__":
    main()
