"""Train the byte-level BPE of the `tiny` backbone on train-split texts."""

import pandas as pd

from llm4rec.core.logs import log_to
from llm4rec.model.tokenization import tokenizer_corpus, train_bpe_tokenizer

with log_to(snakemake.log[0]) as log:
    texts = tokenizer_corpus(pd.read_parquet(snakemake.input.catalog), pd.read_parquet(snakemake.input.interactions))
    tok = train_bpe_tokenizer(texts, snakemake.output[0], vocab_size=snakemake.params.vocab_size)
    log.info("tokenizer: %d texts, vocabulary %d", len(texts), len(tok))
