"""Heatmap of the relation bias of one real second-order prompt (the collator's mask)."""

import json
from pathlib import Path

import pandas as pd

from llm4rec.graph import RelationIndex
from llm4rec.logutil import log_to
from llm4rec.prompts import Examples
from llm4rec.report import plot_relation_bias, second_order_bias

with log_to(snakemake.log[0]) as log:
    inp = snakemake.input
    vocab = json.loads((Path(inp.pretrained) / "backbone" / "config.json").read_text())["vocab_size"]
    index = RelationIndex.load(inp.graph)
    ex = second_order_bias(Examples.load(inp.content), index, vocab, len(pd.read_parquet(inp.users, columns=["uid"])),
                           len(pd.read_parquet(inp.catalog, columns=["iid"])), snakemake.params.max_entities)
    plot_relation_bias(ex, snakemake.output[0], index.max_hops)
    log.info("prompt #%d (%s): %s", ex.example, ex.kind, ex.labels)
