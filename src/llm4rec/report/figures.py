"""Figures for the report (matplotlib, Agg backend): methods, training curves, Multi-VAE."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from llm4rec.core.constants import METRICS


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
