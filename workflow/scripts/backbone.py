"""Materialize `model.backbone` once into a plain folder with its provenance (local rule)."""

import json
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.model.backbone_store import materialize

with log_to(snakemake.log[0]) as log:
    p = snakemake.params
    record = materialize(p.spec, snakemake.output.folder, revision=p.revision)
    log.info("%s", json.dumps(record))
    Path(snakemake.output.record).write_text(json.dumps(record, indent=2) + "\n")
