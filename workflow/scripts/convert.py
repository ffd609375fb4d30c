"""Raw JSON lines to the canonical interim parquet tables."""

import shutil
from pathlib import Path

from llm4rec.convert import ConvertError, convert_dataset
from llm4rec.logutil import log_to

with log_to(snakemake.log[0]) as log:
    p = snakemake.params.convert
    out_dir = Path(snakemake.output.reviews).parent
    try:
        report = convert_dataset(
            Path(snakemake.input.reviews), Path(snakemake.input.meta), out_dir,
            max_reject_frac=p["max_reject_frac"], max_line_bytes=p["max_line_bytes"],
        )
    except ConvertError:
        # Snakemake deletes a failed job's outputs: keep the set-aside lines beside the log.
        for name in ("rejects.jsonl", "convert.json"):
            if (out_dir / name).is_file():
                shutil.copy2(out_dir / name, Path(snakemake.log[0]).with_name(f"convert.{name}"))
        raise
    log.info("convert: %s", report)
