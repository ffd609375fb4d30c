"""Raw JSON lines to the canonical interim parquet tables."""

import shutil
from pathlib import Path

from llm4rec.core.logs import log_to
from llm4rec.data.convert import ConvertError, convert_dataset

with log_to(snakemake.log[0]) as log:
    p = snakemake.params.convert
    out_dir = Path(snakemake.output.reviews).parent
    log_path = Path(snakemake.log[0])
    try:
        report = convert_dataset(
            Path(snakemake.input.reviews),
            Path(snakemake.input.meta),
            out_dir,
            max_reject_frac=p["max_reject_frac"],
            max_line_bytes=p["max_line_bytes"],
            rejects_copy=log_path.with_suffix(".rejects.jsonl"),
        )
    except ConvertError:
        # Snakemake deletes a failed job's outputs: keep the counts beside the log too.
        if (out_dir / "convert.json").is_file():
            shutil.copy2(out_dir / "convert.json", log_path.with_suffix(".convert.json"))
        raise
    log.info("convert: %s", report)
