"""Fetch the raw reviews and meta files of one dataset (local rule)."""

import json
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.data.download import fetch_source

with log_to(snakemake.log[0]) as log:
    p = snakemake.params.download
    out = snakemake.output
    # The demo's URLs are paths relative to the working directory (see download_params).
    urls = {kind: url if "://" in url else Path(url).resolve().as_uri() for kind, url in p["urls"].items()}
    record = fetch_source(
        urls,
        Path(out.reviews).parent,
        expected={kind: {"sha256": p["sha256"][kind], "size": p["size"][kind]} for kind in urls},
        retries=p["retries"],
        backoff=p["backoff"],
        timeout=p["timeout"],
    )
    for kind, rec in record.items():
        log.info("%s: %s", kind, rec)
    Path(out.record).write_text(json.dumps(record, indent=2) + "\n")
