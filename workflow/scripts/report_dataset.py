"""Dataset statistics page for the report."""

import json
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.report.provenance import dataset_stats_html

with log_to(snakemake.log[0]):
    Path(snakemake.output[0]).write_text(
        dataset_stats_html(
            snakemake.wildcards.dataset,
            json.loads(Path(snakemake.input.processed).read_text()),
            json.loads(Path(snakemake.input.graph).read_text()),
        )
    )
