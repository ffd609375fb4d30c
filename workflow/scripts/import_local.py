"""Check a local dataset in the canonical schema and write the interim tables."""

import shutil
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.data.convert import ConvertError
from llm4rec.data.local import import_local

with log_to(snakemake.log[0]) as log:
    out_dir = Path(snakemake.output.reviews).parent
    log_path = Path(snakemake.log[0])
    try:
        report = import_local(
            Path(snakemake.input.reviews),
            Path(snakemake.input.catalog),
            out_dir,
            snakemake.params.convert["max_reject_frac"],
            rejects_copy=log_path.with_suffix(".rejects.jsonl"),
        )
    except ConvertError:
        # Snakemake deletes a failed job's outputs: keep the counts beside the log too.
        if (out_dir / "convert.json").is_file():
            shutil.copy2(out_dir / "convert.json", log_path.with_suffix(".convert.json"))
        raise
    log.info("import: %s", report)
