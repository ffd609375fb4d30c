"""Fit one baseline on train, select on validation, evaluate on test (rules baseline, multivae)."""

import json

import torch

from llm4rec.baselines.runs import load_splits, run_baseline, write_baseline_run
from llm4rec.core.logs import log_to

with log_to(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    name = snakemake.wildcards.get("name", "multivae")
    s = json.loads(snakemake.params.settings)
    processed = snakemake.input.interactions.rsplit("/", 1)[0]
    run = run_baseline(
        name,
        load_splits(processed),
        s["settings"],
        seed=snakemake.params.seed,
        top_k=s["top_k"],
        batch_size=s["batch_size"],
    )
    out = snakemake.output
    write_baseline_run(run, out.metrics, out.per_user, out.recommendations, out.history, processed)
    log.info("%s: %s", name, run.metrics)
