"""Summary tables, paired tests, figures and provenance for `snakemake --report`.

Variants (`{variant}-s{seed}/`) and baselines (`baselines/{name}/`, `baselines/multivae-s{seed}/`)
write the same `metrics.json` and `per_user.parquet`, so one code path summarizes both.
Figures are written with matplotlib's Agg backend (no display needed). The training code
(torch, through the collator) and scipy are imported where they are used: most report jobs
and every Snakemake start (``git_commit``) need neither, and torch alone costs seconds.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import math
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from llm4rec.download import sha256_file  # noqa: E402

if TYPE_CHECKING:
    from llm4rec.encoding import Examples

__all__ = [
    "METRICS",
    "NoSecondOrderPrompt",
    "RunRecord",
    "benchmark_seconds",
    "dataset_stats_html",
    "display_table",
    "method_table",
    "paired_wilcoxon",
    "per_user_mean",
    "plot_methods",
    "plot_multivae_curves",
    "plot_no_relation_bias",
    "plot_relation_bias",
    "plot_training_curves",
    "provenance_html",
    "second_order_bias",
    "summary_table",
    "table_html",
]

# `llm4rec.evaluation.METRICS`, written out: importing it would import torch (see above).
METRICS: tuple[str, ...] = ("Recall@20", "Recall@40", "NDCG@100")
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


# --- summary ---------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One evaluated run: a variant replicate or a baseline (seed None when deterministic)."""

    method: str
    kind: str  # "variant" or "baseline"
    seed: int | None
    run_dir: Path
    benchmarks: list[Path] = field(default_factory=list)


def benchmark_seconds(paths: Iterable[str | Path]) -> float:
    """Wall-clock seconds of a method: the sum of its rules' Snakemake benchmark `s` columns.

    A benchmark file holds one row per repeat; the last row is used. NaN when any file is
    missing (a run copied in without its benchmarks), so a partial sum never passes as a time.
    """
    total = 0.0
    paths = list(paths)
    if not paths:
        return math.nan
    for p in paths:
        p = Path(p)
        if not p.is_file():
            return math.nan
        total += float(pd.read_csv(p, sep="\t")["s"].iloc[-1])
    return total


def summary_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per method and seed: test metrics, test users, validation metrics, epoch, seconds."""
    rows = []
    for r in records:
        m = json.loads((Path(r.run_dir) / "metrics.json").read_text())
        rows.append(
            {
                "method": r.method,
                "kind": r.kind,
                "seed": r.seed,
                **{k: float(m["test"][k]) for k in METRICS},
                "users": int(m["test"]["users"]),
                **{f"val_{k}": float(m["val"][k]) for k in METRICS},
                "epoch": m.get("epoch"),
                "seconds": benchmark_seconds(r.benchmarks),
                "run": str(r.run_dir),
            }
        )
    cols = ["method", "kind", "seed", *METRICS, "users", *(f"val_{k}" for k in METRICS), "epoch", "seconds", "run"]
    out = pd.DataFrame(rows, columns=cols)
    out["seed"] = out["seed"].astype("Int64")
    out["epoch"] = out["epoch"].astype("Int64")
    return out


def per_user_mean(frames: Sequence[pd.DataFrame], metric: str = "Recall@20") -> pd.Series:
    """Each user's ``metric`` averaged over replicates (index uid); users of every replicate only."""
    if not frames:
        raise ValueError("no per-user tables")
    wide = pd.concat([f.set_index("uid")[metric].rename(n) for n, f in enumerate(frames)], axis=1, join="inner")
    return wide.mean(axis=1).sort_index()


def paired_wilcoxon(
    per_user: Mapping[str, Sequence[pd.DataFrame]],
    reference: str = "full",
    metric: str = "Recall@20",
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Two-sided paired Wilcoxon signed-rank test of ``reference`` against every other method.

    Pairs are users evaluated by both; each user's value is first averaged over the method's
    seeds. Zero differences are dropped (scipy's default ``zero_method="wilcox"``); when all
    differences are zero there is nothing to test and the p-value is NaN.
    """
    import scipy.stats

    if reference not in per_user:
        raise ValueError(f"reference method {reference!r} has no per-user results")
    ref = per_user_mean(per_user[reference], metric)
    rows = []
    for name in methods if methods is not None else [m for m in per_user if m != reference]:
        other = per_user_mean(per_user[name], metric)
        a, b = ref.align(other, join="inner")
        diff = (a - b).to_numpy()
        nonzero = int(np.count_nonzero(diff))
        if nonzero == 0:
            stat, p = math.nan, math.nan
        else:
            res = scipy.stats.wilcoxon(a.to_numpy(), b.to_numpy(), alternative="two-sided")
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append(
            {
                "method": name,
                "reference": reference,
                "metric": metric,
                "n_users": int(diff.size),
                "n_nonzero": nonzero,
                "mean_reference": float(a.mean()) if a.size else math.nan,
                "mean_method": float(b.mean()) if b.size else math.nan,
                "mean_diff": float(diff.mean()) if diff.size else math.nan,
                "statistic": stat,
                "p_value": p,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "method",
            "reference",
            "metric",
            "n_users",
            "n_nonzero",
            "mean_reference",
            "mean_method",
            "mean_diff",
            "statistic",
            "p_value",
        ],
    )


def method_table(summary: pd.DataFrame, wilcoxon: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean and spread (sample standard deviation over seeds; NaN for one seed) per method.

    Methods keep their first-appearance order in ``summary``; ``wilcoxon`` (from
    :func:`paired_wilcoxon`) adds its p-value and mean difference, empty for the reference.
    """
    order = list(dict.fromkeys(summary["method"]))
    g = summary.groupby("method", sort=False)
    out = pd.DataFrame({"method": order})
    out["kind"] = [g.get_group(m)["kind"].iloc[0] for m in order]
    out["n_seeds"] = [int(len(g.get_group(m))) for m in order]
    for col in (*METRICS, "seconds"):
        out[f"{col}_mean"] = [float(g.get_group(m)[col].mean()) for m in order]
        out[f"{col}_std"] = [
            float(g.get_group(m)[col].std(ddof=1)) if len(g.get_group(m)) > 1 else math.nan for m in order
        ]
    if wilcoxon is not None and len(wilcoxon):
        w = wilcoxon.set_index("method")
        out["wilcoxon_reference"] = w["reference"].iloc[0]
        out["wilcoxon_metric"] = w["metric"].iloc[0]
        out["wilcoxon_mean_diff"] = out["method"].map(w["mean_diff"])
        out["wilcoxon_n_users"] = out["method"].map(w["n_users"]).astype("Int64")
        out["wilcoxon_p"] = out["method"].map(w["p_value"])
    return out


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_table(methods: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """The methods table as strings for people: mean ± std, seconds, p-value."""
    out = pd.DataFrame({"method": methods["method"], "seeds": methods["n_seeds"]})
    for k in METRICS:
        out[k] = [_fmt(m, s, digits) for m, s in zip(methods[f"{k}_mean"], methods[f"{k}_std"])]
    out["time (s)"] = [_fmt(m, s, 1) for m, s in zip(methods["seconds_mean"], methods["seconds_std"])]
    if "wilcoxon_p" in methods:
        ref, metric = methods["wilcoxon_reference"].iloc[0], methods["wilcoxon_metric"].iloc[0]
        out[f"p ({metric} vs {ref})"] = ["" if pd.isna(p) else f"{p:.3g}" for p in methods["wilcoxon_p"]]
    return out


def table_html(df: pd.DataFrame, title: str, note: str = "") -> str:
    """A small standalone HTML page with one table (a report item shown in an iframe)."""
    body = df.to_html(index=False, na_rep="", border=0, classes="t", escape=True)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;font-size:14px;margin:1em}"
        "table.t{border-collapse:collapse}table.t td,table.t th{padding:4px 8px;border-bottom:1px solid #ccc;"
        "text-align:right}table.t td:first-child,table.t th:first-child{text-align:left}</style></head><body>"
        f"<h3>{html.escape(title)}</h3>{body}" + (f"<p>{html.escape(note)}</p>" if note else "") + "</body></html>\n"
    )


# --- figures ---------------------------------------------------------------------------


def plot_methods(methods: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars of the test metrics per method: mean over seeds, error bar one std, dots per seed."""
    names = list(methods["method"])
    x = np.arange(len(names))
    width = 0.8 / len(METRICS)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2))
    for k, metric in enumerate(METRICS):
        pos = x + (k - (len(METRICS) - 1) / 2) * width
        mean = methods[f"{metric}_mean"].to_numpy(dtype=float)
        std = methods[f"{metric}_std"].to_numpy(dtype=float)
        ax.bar(pos, mean, width, label=metric)
        spread = np.isfinite(std)  # one run: no spread to draw
        if spread.any():
            ax.errorbar(pos[spread], mean[spread], yerr=std[spread], fmt="none", ecolor="k", capsize=3, lw=1)
        for j, name in enumerate(names):
            vals = summary.loc[summary["method"] == name, metric].to_numpy(dtype=float)
            if vals.size > 1:
                ax.plot(np.full(vals.size, pos[j]), vals, "k.", ms=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("test metric (mean ± std over seeds)")
    ax.legend(frameon=False, ncols=len(METRICS), loc="upper center", bbox_to_anchor=(0.5, 1.12))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# Figures at most this wide (inches; 72 pt each in SVG, 96 px per inch on screen): a result
# shows beside its caption, which takes half the window, so at 1400 px about 676 px are left.
FIGURE_WIDTH_IN = 7.0


def _legend_below(ax) -> None:
    """The axes' legend under its x axis label, in columns, outside the plotted area."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=min(3, len(handles)))


def plot_training_curves(method: str, histories: Mapping[int, Mapping[str, pd.DataFrame]], path: str | Path) -> None:
    """:func:`training_curves_figure`, saved to ``path``."""
    fig = training_curves_figure(method, histories)
    fig.savefig(path)
    plt.close(fig)


def training_curves_figure(method: str, histories: Mapping[int, Mapping[str, pd.DataFrame]]):
    """Pre-training loss, fine-tuning loss and validation metrics per epoch, one line per seed.

    FIGURE_WIDTH_IN wide (the losses side by side, validation under them), so that it fits the
    report's page beside a result's caption at 1400 px; the legends sit under their plots, where
    they cover no curve whatever the number of seeds."""
    fig = plt.figure(figsize=(FIGURE_WIDTH_IN, 6.4), layout="constrained")
    grid = fig.subplot_mosaic([["pre", "fin"], ["val", "val"]])
    axes = [grid["pre"], grid["fin"], grid["val"]]
    colors = dict(zip(METRICS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for seed, h in sorted(histories.items()):
        pre, fin = h.get("pretrain"), h.get("finetune")
        if pre is not None and len(pre):
            for kind, marker in (("content", "s"), ("collab", ".")):
                part = pre[pre["kind"] == kind]
                if len(part):
                    axes[0].plot(
                        part["epoch"],
                        part["loss"],
                        marker=marker,
                        ls="-" if kind == "collab" else "none",
                        label=f"{kind} s{seed}",
                    )
        if fin is not None and len(fin):
            axes[1].plot(fin["epoch"], fin["loss"], label=f"s{seed}")
            for metric in METRICS:
                col = f"val_{metric}"
                if col in fin:
                    axes[2].plot(
                        fin["epoch"],
                        fin[col],
                        color=colors[metric],
                        alpha=0.8,
                        label=metric if seed == min(histories) else None,
                    )
            if "val_score" in fin:
                best = int(fin["epoch"].iloc[int(np.argmax(fin["val_score"].to_numpy()))])
                axes[2].axvline(best, color="grey", ls=":", lw=1)
    axes[0].set(title="pre-training loss", xlabel="epoch", yscale="log")
    axes[1].set(title="fine-tuning loss", xlabel="epoch")
    axes[2].set(title="validation (dotted: best epoch)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        _legend_below(ax)
    fig.suptitle(method)
    return fig


def plot_multivae_curves(histories: Mapping[int, pd.DataFrame], path: str | Path) -> None:
    """Multi-VAE: training loss and KL weight, validation metrics per epoch, one line per seed."""
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_IN, 3.4), layout="constrained")
    colors = dict(zip(METRICS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    beta_ax = axes[0].twinx()
    for seed, h in sorted(histories.items()):
        axes[0].plot(h["epoch"], h["loss"], label=f"loss s{seed}")
        beta_ax.plot(h["epoch"], h["beta"], color="grey", ls="--", lw=1)
        for metric in METRICS:
            axes[1].plot(
                h["epoch"], h[metric], color=colors[metric], alpha=0.8, label=metric if seed == min(histories) else None
            )
        axes[1].axvline(int(h["epoch"].iloc[int(np.argmax(h["selection"].to_numpy()))]), color="grey", ls=":", lw=1)
    axes[0].set(title="training loss (dashed: KL weight)", xlabel="epoch")
    beta_ax.set_ylabel("KL weight beta")
    axes[1].set(title="validation (dotted: best epoch)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        _legend_below(ax)
    fig.suptitle("multivae")
    fig.savefig(path)
    plt.close(fig)


class NoSecondOrderPrompt(ValueError):
    """The dataset has no second-order group (no brand or category shared by two items)."""


@dataclass
class BiasExample:
    """The additive mask of one second-order prompt, restricted to its entity tokens."""

    example: int
    kind: str
    labels: list[str]
    bias: np.ndarray  # [n, n], NaN above the diagonal (causally masked)
    hops: np.ndarray  # [n, n] hop distances between the entities' graph nodes


def second_order_bias(
    examples: Examples, index: Any, vocab: int, n_users: int, n_items: int, max_entities: int = 12
) -> BiasExample:
    """Build the attention bias of one real second-order prompt with the training collator.

    Picks the prompt whose entity pairs show the most distinct relation values (then the
    most entities, up to ``max_entities``; then the first), so the figure shows the
    distances the bias encodes rather than a uniform block. Raises
    :class:`NoSecondOrderPrompt` when there is none, for the caller to say so.
    """
    from llm4rec.collate import EdgeAwareCollator
    from llm4rec.encoding import GRAPH_KINDS, KIND_NAMES
    from llm4rec.model import MASK_MIN
    from llm4rec.tokenization import EntityVocab

    candidates = np.flatnonzero(np.isin(examples.kind, sorted(GRAPH_KINDS)))
    if candidates.size == 0:
        raise NoSecondOrderPrompt("the encoded examples hold no second-order prompt")
    ev = EntityVocab(vocab, n_users, n_items)
    collate = EdgeAwareCollator(ev, index, "seed")
    best, best_key = None, None
    for n in candidates:
        ex = examples[int(n)]
        nodes = ev.node_of(ex["input_ids"])
        pos = np.flatnonzero(nodes >= 0)[:max_entities]
        mask = collate([ex])["attention_mask"][0, 0].numpy()
        sub = mask[np.ix_(pos, pos)]
        lower = np.tril(np.ones_like(sub, dtype=bool))
        key = (len(np.unique(sub[lower])), pos.size, -int(n))
        if best_key is None or key > best_key:
            best_key, best = key, (int(n), pos, nodes, sub)
    n, pos, nodes, sub = best
    sub = np.where(sub <= MASK_MIN / 2, np.nan, sub).astype(np.float64)
    ent = nodes[pos]
    hops = np.asarray(index.hops(np.repeat(ent, ent.size), np.tile(ent, ent.size)), dtype=np.int64).reshape(
        ent.size, -1
    )
    labels = [ev.token_string(int(t)) for t in ev.vocab + ent]
    return BiasExample(n, KIND_NAMES[int(examples.kind[n])], labels, sub, hops)


def plot_relation_bias(ex: BiasExample, path: str | Path, max_hops: int = 5) -> None:
    """Heatmap of R between the entity tokens of one prompt, annotated with R and the hop distance."""
    size = 0.55 * len(ex.labels) + 2.5
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(np.ma.masked_invalid(ex.bias), cmap="viridis")
    mid = (np.nanmin(ex.bias) + np.nanmax(ex.bias)) / 2  # dark text on the light half of the map
    for i in range(ex.bias.shape[0]):
        for j in range(ex.bias.shape[1]):
            if not np.isnan(ex.bias[i, j]):
                h = ex.hops[i, j]
                ax.text(
                    j,
                    i,
                    f"{ex.bias[i, j]:.2f}\n{'>' + str(max_hops) if h > max_hops else h}h",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="w" if ex.bias[i, j] < mid else "k",
                )
    ax.set_xticks(range(len(ex.labels)), ex.labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(ex.labels)), ex.labels, fontsize=7)
    ax.set_title(
        f"relation bias R, {ex.kind} prompt #{ex.example}\n(query row, key column; blank: causal mask)", fontsize=9
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="R (added to attention logits)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_no_relation_bias(path: str | Path, reason: str) -> None:
    """A figure that says why there is no heatmap, so the report keeps its place and builds.

    The text stays text in the SVG (not glyph paths), so it can be read, searched and tested.
    """
    with plt.rc_context({"svg.fonttype": "none"}):
        fig, ax = plt.subplots(figsize=(7, 2))
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"No second-order prompt: {reason}.\nThe relation bias heatmap needs one.",
            ha="center",
            va="center",
            fontsize=10,
            wrap=True,
        )
        fig.savefig(path)
        plt.close(fig)


# --- data statistics and provenance ------------------------------------------------------


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
    from .backbone_store import record_rows

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
    backbone, its provenance record (llm4rec.backbone_store), as one HTML page."""
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
