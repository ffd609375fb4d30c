"""Build the relation index over train edges and its statistics (docs/method.md section 3)."""

import json
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.data.preprocess import load_processed
from llm4rec.graph.relation import build_relation_index, graph_stats

with log_to(snakemake.log[0]) as log:
    g = snakemake.params.graph
    data = load_processed(Path(snakemake.input.interactions).parent)
    index = build_relation_index(
        data.interactions,
        data.n_users,
        data.n_items,
        include_eval_edges=g["include_eval_edges"],
        max_hops=g["max_hops"],
    )
    index.save(Path(snakemake.output.index))
    stats = graph_stats(index, g["stats_sample_pairs"], snakemake.params.seed)
    stats["include_eval_edges"] = g["include_eval_edges"]
    Path(snakemake.output.stats).write_text(json.dumps(stats, indent=2) + "\n")
    log.info("graph: %s", stats)
