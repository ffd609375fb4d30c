"""Check a local dataset in the canonical schema and write the interim tables."""

from pathlib import Path

from llm4rec.local import import_local
from llm4rec.logutil import log_to

with log_to(snakemake.log[0]) as log:
    report = import_local(Path(snakemake.input.reviews), Path(snakemake.input.catalog),
                          Path(snakemake.output.reviews).parent, snakemake.params.convert["max_reject_frac"])
    log.info("import: %s", report)
