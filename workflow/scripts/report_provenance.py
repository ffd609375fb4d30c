"""Provenance page: merged config, git commit, package versions, sha256 of the raw files,
the backbone's provenance record."""

import json
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.report.provenance import package_versions, provenance_html

with log_to(snakemake.log[0]):
    config_text = json.dumps(json.loads(snakemake.params.config), indent=2)
    files = dict(snakemake.input.items())
    record = files.pop("backbone", None)
    backbone = json.loads(Path(record).read_text()) if record else None
    Path(snakemake.output[0]).write_text(
        provenance_html(config_text, snakemake.params.commit, package_versions(), files, backbone)
    )
