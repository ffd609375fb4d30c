"""Heatmap of the relation bias of one real second-order prompt (the collator's mask)."""

import json
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.data.preprocess import processed_sizes
from llm4rec.graph.relation import RelationIndex
from llm4rec.model.encoding import Examples
from llm4rec.report.bias import NoSecondOrderPrompt, plot_no_relation_bias, plot_relation_bias, second_order_bias

with log_to(snakemake.log[0]) as log:
    inp = snakemake.input
    vocab = json.loads((Path(inp.pretrained) / "backbone" / "config.json").read_text())["vocab_size"]
    index = RelationIndex.load(inp.graph)
    try:
        ex = second_order_bias(
            Examples.load(inp.content),
            index,
            vocab,
            *processed_sizes(Path(inp.users).parent),
            snakemake.params.max_entities,
        )
    except NoSecondOrderPrompt:
        # Items that share no brand or category make no second-order group: say so, do not fail.
        reason = (
            f"no brand or category is shared by two items of {snakemake.wildcards.dataset} "
            "(a category on more than second_order.max_group_frac of the items does not count)"
        )
        plot_no_relation_bias(snakemake.output[0], reason)
        log.warning("no second-order prompt: %s; wrote a figure that says so", reason)
    else:
        plot_relation_bias(ex, snakemake.output[0], index.max_hops)
        log.info("prompt #%d (%s): %s", ex.example, ex.kind, ex.labels)
