"""Validation Recall@20 by epoch of several runs in one figure (issue 23's comparisons across
datasets: the report draws the curves of one dataset's methods only).

Each run is `name=folder`: a model run (`{folder}/finetune/history.csv`, fine-tuning epochs) or
a Multi-VAE baseline run (`{folder}/history.csv`).

    .venv/bin/python bench/plot_val_curves.py --out bench/figures/x.svg \
        tiny=results/a/full-s0 smollm2=results/b/full-s0 multivae=results/a/baselines/multivae-s0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def validation_curve(folder: Path, metric: str = "Recall@20") -> pd.Series:
    """Validation `metric` by epoch of a model run or a Multi-VAE run."""
    model_history = folder / "finetune" / "history.csv"
    if model_history.exists():
        history = pd.read_csv(model_history)
        return history.set_index("epoch")[f"val_{metric}"]
    history = pd.read_csv(folder / "history.csv")
    return history.set_index("epoch")[metric]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metric", default="Recall@20")
    ap.add_argument("--title", default="")
    ap.add_argument("runs", nargs="+", help="name=run_folder")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        curve = validation_curve(Path(folder), args.metric)
        ax.plot(curve.index, curve.to_numpy(), marker=".", label=name)
    ax.set_xlabel("fine-tuning epoch (Multi-VAE: its own epochs)")
    ax.set_ylabel(f"validation {args.metric}")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
