"""Summary over methods and seeds: per-run table, mean ± std per method, paired Wilcoxon tests."""

import json
from pathlib import Path

import pandas as pd

from llm4rec.core.logs import log_to
from llm4rec.report.stats import paired_wilcoxon
from llm4rec.report.tables import RunRecord, display_table, method_table, summary_table, table_html

with log_to(snakemake.log[0]) as log:
    records = [
        RunRecord(r["method"], r["kind"], r["seed"], Path(r["run_dir"]), [Path(b) for b in r["benchmarks"]])
        for r in json.loads(snakemake.params.records)
    ]
    summary = summary_table(records)
    per_user = {}
    for r in records:
        per_user.setdefault(r.method, []).append(pd.read_parquet(r.run_dir / "per_user.parquet"))
    ref, metric = snakemake.params.reference, snakemake.params.metric
    wilcoxon = paired_wilcoxon(per_user, reference=ref, metric=metric)
    methods = method_table(summary, wilcoxon)
    out = snakemake.output
    summary.to_csv(out.summary, index=False)
    methods.to_csv(out.methods, index=False)
    wilcoxon.to_csv(out.wilcoxon, index=False)
    shown = display_table(methods)
    # For the report's rst (csv-table): '@' escaped, else docutils turns Recall@20 into a mailto link.
    shown.rename(columns=lambda c: c.replace("@", "\\@")).to_csv(out.display, index=False)
    Path(out.html).write_text(
        table_html(
            shown,
            "Test metrics per method (mean ± std over seeds)",
            f"p: two-sided paired Wilcoxon signed-rank test on per-user {metric} (each user's value averaged "
            f"over seeds) of {ref} against the method. Time: wall-clock seconds of the method's rules "
            "(pretrain + finetune + evaluate for variants), mean over seeds.",
        )
    )
    log.info("summary:\n%s", shown.to_string(index=False))
