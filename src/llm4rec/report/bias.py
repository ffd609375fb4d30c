"""The relation-bias heatmap of one second-order prompt (docs/method.md 5.3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llm4rec.graph.relation import EXACT_HOPS

if TYPE_CHECKING:
    from llm4rec.model.encoding import Examples


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
    examples: Examples, index: Any, vocab: int, n_users: int, n_items: int, max_entities: int
) -> BiasExample:
    """Build the attention bias of one real second-order prompt with the training collator.

    Picks the prompt whose entity pairs show the most distinct relation values (then the
    most entities, up to ``max_entities``; then the first), so the figure shows the
    distances the bias encodes rather than a uniform block. Raises
    :class:`NoSecondOrderPrompt` when there is none, for the caller to say so.
    """
    from llm4rec.core.constants import MASK_MIN
    from llm4rec.model.collate import EdgeAwareCollator
    from llm4rec.model.encoding import GRAPH_KINDS, KIND_NAMES
    from llm4rec.model.tokenization import EntityVocab

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


def plot_relation_bias(ex: BiasExample, path: str | Path, max_hops: int = EXACT_HOPS) -> None:
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
