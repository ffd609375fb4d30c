"""Tokenize the content examples once per dataset (reviews, item texts, second-order)."""

import pandas as pd

from llm4rec.core.logs import log_to
from llm4rec.model.encoding import encode_content
from llm4rec.model.settings import TinySettings

with log_to(snakemake.log[0]) as log:
    p = snakemake.params
    examples = encode_content(
        pd.read_parquet(snakemake.input.catalog),
        pd.read_parquet(snakemake.input.interactions),
        pd.read_parquet(snakemake.input.second_order),
        snakemake.input.tokenizer or None,
        p.backbone,
        TinySettings(**p.tiny),
        p.max_length,
        p.seed,
    )
    examples.save(snakemake.output.content)
    log.info("content examples: %d, tokens: %d", len(examples), int(examples.lengths().sum()))
