"""Provenance for the report: dataset statistics, git commit, package versions, backbone."""

from __future__ import annotations

import html
import importlib.metadata
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from llm4rec.core.hashing import sha256_file
from llm4rec.report.tables import table_html

PACKAGES: tuple[str, ...] = (
    "llm4rec",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "safetensors",
    "matplotlib",
    "snakemake",
)


def dataset_stats_html(dataset: str, processed: Mapping[str, Any], graph: Mapping[str, Any]) -> str:
    """Filtering steps, split sizes and graph facts as one HTML page."""
    steps = pd.DataFrame([{"step": k, **v} for k, v in processed.get("steps", {}).items()])
    facts = {
        "users": processed.get("users"),
        "items": processed.get("items"),
        "interactions": processed.get("interactions"),
        "sparsity": None if processed.get("sparsity") is None else f"{processed['sparsity']:.4%}",
        **{f"{k} interactions": v for k, v in processed.get("per_split", {}).items()},
        "graph nodes": graph.get("nodes"),
        "graph edges (train)": graph.get("edges"),
        "graph from val/test edges too": graph.get("include_eval_edges"),
        "D6": graph.get("d6"),
        "isolated users": graph.get("isolated_users"),
        "isolated items": graph.get("isolated_items"),
    }
    facts_df = pd.DataFrame({"statistic": list(facts), "value": [str(v) for v in facts.values()]})
    hist = graph.get("item_pair_hops", {}).get("histogram", {})
    hist_df = pd.DataFrame({"hops": list(hist), "item pairs": list(hist.values())})
    parts = [table_html(facts_df, f"{dataset}: dataset"), table_html(steps, "filtering steps")]
    if len(hist_df):
        parts.append(table_html(hist_df, "hop distance of sampled item pairs (train graph)"))
    bodies = [p.split("<body>", 1)[1].rsplit("</body>", 1)[0] for p in parts]
    return parts[0].split("<body>", 1)[0] + "<body>" + "".join(bodies) + "</body></html>\n"


def git_commit(repo: str | Path) -> str:
    """HEAD of the checkout (plus '-dirty' with uncommitted changes); 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def _backbone_html(record: Mapping[str, Any] | None) -> str:
    """The backbone's provenance as a table; tiny has none (trained from scratch)."""
    if record is None:
        return "<h3>backbone</h3><p>tiny: a GPT-2 trained from scratch on this dataset (nothing fetched)</p>"
    from llm4rec.model.backbone_store import record_rows

    rows = pd.DataFrame(record_rows(record), columns=["field", "value"])
    return table_html(rows, "backbone (as materialized)").split("<body>", 1)[1].rsplit("</body>", 1)[0]


def provenance_html(
    config_text: str,
    commit: str,
    packages: Mapping[str, str],
    raw_files: Mapping[str, str | Path],
    backbone: Mapping[str, Any] | None = None,
) -> str:
    """Config, git commit, package versions, sha256 of the raw inputs and, for a pre-trained
    backbone, its provenance record (llm4rec.model.backbone_store), as one HTML page."""
    files = pd.DataFrame(
        [{"file": str(p), "bytes": Path(p).stat().st_size, "sha256": sha256_file(p)} for p in raw_files.values()],
        columns=["file", "bytes", "sha256"],
    )
    pk = pd.DataFrame({"package": list(packages), "version": list(packages.values())})
    head = table_html(pk, "package versions").split("<body>", 1)
    return (
        head[0]
        + "<body><h3>git commit</h3><p><code>"
        + html.escape(commit)
        + "</code></p>"
        + head[1].rsplit("</body>", 1)[0]
        + table_html(files, "raw input files").split("<body>", 1)[1].rsplit("</body>", 1)[0]
        + _backbone_html(backbone)
        + "<h3>configuration (merged, as run; JSON)</h3><pre>"
        + html.escape(config_text)
        + "</pre></body></html>\n"
    )
