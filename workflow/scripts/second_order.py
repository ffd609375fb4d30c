"""Brand and category groups for second-order prompts (docs/method.md 3.8)."""

import pandas as pd

from llm4rec.core.logs import log_to
from llm4rec.graph.second_order import build_second_order, save_second_order

with log_to(snakemake.log[0]) as log:
    p = snakemake.params.second_order
    groups = build_second_order(
        pd.read_parquet(snakemake.input.catalog),
        max_group_frac=p["max_group_frac"],
        max_items_per_prompt=p["max_items_per_prompt"],
        seed=snakemake.params.seed,
    )
    save_second_order(groups, snakemake.output.groups)
    log.info("second-order prompts: %d (%s)", len(groups), groups["kind"].value_counts().to_dict())
