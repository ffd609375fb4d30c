"""Build the relation index over train edges and its statistics (docs/method.md section 3)."""

import json
from pathlib import Path

import pandas as pd

from llm4rec.graph import build_relation_index, graph_stats
from llm4rec.logutil import log_to

with log_to(snakemake.log[0]) as log:
    g = snakemake.params.graph
    n_users = len(pd.read_parquet(snakemake.input.users, columns=["uid"]))
    n_items = len(pd.read_parquet(snakemake.input.catalog, columns=["iid"]))
    interactions = pd.read_parquet(snakemake.input.interactions, columns=["uid", "iid", "split"])
    index = build_relation_index(interactions, n_users, n_items,
                                 include_eval_edges=g["include_eval_edges"], max_hops=g["max_hops"])
    index.save(Path(snakemake.output.index))
    stats = graph_stats(index, g["stats_sample_pairs"], snakemake.params.seed)
    stats["include_eval_edges"] = g["include_eval_edges"]
    Path(snakemake.output.stats).write_text(json.dumps(stats, indent=2) + "\n")
    log.info("graph: %s", stats)
