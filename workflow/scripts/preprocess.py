"""Filter, k-core, ids and split (docs/method.md section 2)."""

from pathlib import Path

import pandas as pd

from llm4rec.core.logs import log_to
from llm4rec.data.preprocess import PreprocessSettings, preprocess, write_processed

with log_to(snakemake.log[0]) as log:
    settings = PreprocessSettings(seed=snakemake.params.seed, **snakemake.params.preprocess)
    result = preprocess(pd.read_parquet(snakemake.input.reviews), pd.read_parquet(snakemake.input.catalog), settings)
    write_processed(result, Path(snakemake.output.stats).parent)
    log.info("stats: %s", result["stats"])
