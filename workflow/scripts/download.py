"""Fetch the raw reviews and meta files of one dataset (local rule)."""

import json
from pathlib import Path

from llm4rec.download import fetch
from llm4rec.logutil import log_to

with log_to(snakemake.log[0]) as log:
    p = snakemake.params.download
    record = {}
    for kind in ("reviews", "meta"):
        url = p["urls"][kind]
        record[kind] = fetch(
            url if "://" in url else Path(url).resolve().as_uri(), Path(snakemake.output[kind]),
            sha256=p["sha256"][kind],
            size=p["size"][kind], retries=p["retries"], backoff=p["backoff"], timeout=p["timeout"],
        )
        log.info("%s: %s", kind, record[kind])
    Path(snakemake.output.record).write_text(json.dumps(record, indent=2) + "\n")
