"""Raw JSON lines to the canonical interim parquet tables."""

from pathlib import Path

from llm4rec.convert import convert_dataset
from llm4rec.logutil import log_to

with log_to(snakemake.log[0]) as log:
    p = snakemake.params.convert
    report = convert_dataset(
        Path(snakemake.input.reviews), Path(snakemake.input.meta), Path(snakemake.output.reviews).parent,
        max_reject_frac=p["max_reject_frac"], max_line_bytes=p["max_line_bytes"],
    )
    log.info("convert: %s", report)
