"""Training curves of one method over its seeds (losses and validation metrics per epoch)."""

from pathlib import Path

import pandas as pd

from llm4rec.core.logs import log_to
from llm4rec.report.figures import plot_multivae_curves, plot_training_curves

with log_to(snakemake.log[0]):
    method, seeds = snakemake.wildcards.method, snakemake.params.seeds
    if method == "multivae":
        plot_multivae_curves({s: pd.read_csv(p) for s, p in zip(seeds, snakemake.input)}, snakemake.output[0])
    else:
        dirs = iter(snakemake.input)  # pretrain, finetune per seed (curve_inputs' order)
        histories = {
            s: {stage: pd.read_csv(Path(next(dirs)) / "history.csv") for stage in ("pretrain", "finetune")}
            for s in seeds
        }
        plot_training_curves(method, histories, snakemake.output[0])
