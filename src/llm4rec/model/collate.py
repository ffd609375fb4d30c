"""Batching: which examples form a batch, right padding and the additive edge-aware mask.

Global batches are the same list of example indices on every process; within a process's
share, length-sorted micro-batches of at most `MICRO_BATCH_TOKENS` padded tokens keep short
examples from being padded to the longest (`micro_batches`).

The backbone receives a float `[B, 1, L, L]` mask = causal + padding + R, used as given by
eager and SDPA attention (docs/method.md 5.3). R is built from a per-pair hop class:

- -1 for pairs that are not both entity tokens (R = 0),
- the hop distance 0..max_hops, or max_hops + 1 for "farther / unreachable".

In a bipartite graph an edge is exactly distance 1, so R = lut[class] with the closed form of docs/method.md 3.3.
Outside second-order prompts every prompt holds one user and that user's own train items:
the class is then a fixed pattern by token type (same node 0, user-item 1, item-item 2),
computed with tensor ops. Only second-order rows ask `RelationIndex` for hop distances, for
their entity pairs at or below the diagonal (the rest is masked by causality anyway).
`seed`/`type`/`none` turn into the float mask here; `learned` hands the classes to the model,
always exact up to 5 hops (whatever the graph's `max_hops`), so that the model can start
every pair at its seed value.

The float mask is float32 with blocked entries at `model.MASK_MIN` (float32's minimum); the
model turns it into the attention's compute dtype, blocked entries at that dtype's minimum.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from llm4rec.core.constants import IGNORE_INDEX, MASK_MIN
from llm4rec.graph.relation import EXACT_HOPS, relation_lut
from llm4rec.model.encoding import GRAPH_KINDS, KIND
from llm4rec.model.tokenization import EntityVocab

EDGE_BIAS_MODES = ("seed", "none", "type", "learned")
MICRO_BATCH_TOKENS = 4096


def global_batches(n: int, batch_size: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """The same list of example-index batches on every process."""
    idx = np.arange(n) if order is None else order
    return [idx[k : k + batch_size] for k in range(0, n, batch_size)]


def micro_batches(lengths: np.ndarray, max_tokens: int = MICRO_BATCH_TOKENS) -> list[np.ndarray]:
    """Split examples (by their positions) into length-sorted groups of at most `max_tokens`
    padded tokens, so that short examples are not padded to the batch's longest."""
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for k in range(1, len(order)):
        if (k + 1 - start) * lengths[order[k]] > max_tokens:
            groups.append(order[start:k])
            start = k
    groups.append(order[start:])
    return groups


class HopIndex(Protocol):
    """What the collator needs from `llm4rec.graph.relation.RelationIndex`."""

    n_users: int
    max_hops: int
    d6: int

    def hops(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


def index_lut(index: HopIndex) -> np.ndarray:
    """`relation_lut` for an index's graph (its D6; refuses a horizon below 5 hops)."""
    if index.max_hops < 5:
        raise ValueError(f"the seed relation needs exact distances up to 5 hops; index has max_hops={index.max_hops}")
    return relation_lut(index.max_hops, index.d6, bool(getattr(index, "has_edges", True)))


def exact_hop_index(index: HopIndex) -> HopIndex:
    """`index` with a hop horizon of at least 5: the classes `learned` needs to start at the
    seed values. `max_hops` is only a query horizon (as `RelationIndex.load` overrides it), so
    a shallow copy with a larger one answers exact distances from the same structures."""
    if index.max_hops >= EXACT_HOPS:
        return index
    out = copy.copy(index)
    out.max_hops = EXACT_HOPS
    return out


def hop_classes(
    nodes: torch.Tensor,
    graph_rows: torch.Tensor,
    n_users: int,
    index: HopIndex | None,
    use_graph: bool = True,
) -> torch.Tensor:
    """Hop class per token pair, `[B, L, L]` int8 (-1 where either token is not an entity).

    Rows flagged in `graph_rows` take exact distances from `index` when `use_graph`;
    all other rows (and all rows when not `use_graph`) take the by-type pattern.
    """
    ent = nodes >= 0
    pair = ent[:, :, None] & ent[:, None, :]
    is_item = nodes >= n_users
    cls = torch.full(pair.shape, 2, dtype=torch.int8)
    cls.masked_fill_(is_item[:, :, None] != is_item[:, None, :], 1)
    cls.masked_fill_(nodes[:, :, None] == nodes[:, None, :], 0)
    cls.masked_fill_(~pair, -1)
    if use_graph and bool(graph_rows.any()):
        if index is None:
            raise ValueError("second-order rows need a RelationIndex")
        rows, i, j, h = _pair_hops(nodes, graph_rows, index, same_node=True)
        h_t = torch.from_numpy(h).to(torch.int8)
        cls[rows, i, j] = h_t
        cls[rows, j, i] = h_t
    return cls


def _pair_hops(
    nodes: torch.Tensor, graph_rows: torch.Tensor, index: HopIndex, same_node: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Exact hop classes (capped at max_hops + 1) of the entity pairs on and below the diagonal
    of the rows flagged by `graph_rows`, asked of `index` in one call: (rows, i, j, hops).
    Without `same_node`, pairs of one node are left out (the by-type pattern sets them)."""
    g = torch.nonzero(graph_rows, as_tuple=True)[0]
    sub = nodes[g]
    ent = sub >= 0
    L = sub.shape[1]
    pairs = ent[:, :, None] & ent[:, None, :] & torch.ones(L, L, dtype=torch.bool).tril()
    if not same_node:
        pairs &= sub[:, :, None] != sub[:, None, :]
    k, i, j = torch.nonzero(pairs, as_tuple=True)
    h = np.minimum(np.asarray(index.hops(sub[k, i].numpy(), sub[k, j].numpy()), dtype=np.int64), index.max_hops + 1)
    return g[k], i, j, h


def additive_mask(bias: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`[B, 1, L, L]` float mask: bias where (j <= i and j is a real token), else finfo.min.

    Fills `bias` in place (broadcast masks, no `[B, L, L]` boolean temporaries)."""
    L = bias.shape[-1]
    bias.masked_fill_(torch.ones(L, L, dtype=torch.bool).triu(1), MASK_MIN)
    bias.masked_fill_((torch.arange(L)[None, :] >= lengths[:, None])[:, None, :], MASK_MIN)
    return bias[:, None]


def type_pattern(nodes: torch.Tensor, n_users: int, lut: torch.Tensor) -> torch.Tensor:
    """R `[B, L, L]` by token type: same node lut[0], user-item lut[1], other entity pairs
    lut[2], text 0. The type table is applied as one batched matmul of one-hot type
    vectors (exact: every sum has a single non-zero term)."""
    ent = nodes >= 0
    onehot = torch.stack([ent & (nodes < n_users), nodes >= n_users], dim=-1).to(lut.dtype)
    table = torch.stack([torch.stack([lut[2], lut[1]]), torch.stack([lut[1], lut[2]])])
    bias = (onehot @ table) @ onehot.transpose(1, 2)
    bias.masked_fill_((nodes[:, :, None] == nodes[:, None, :]) & ent[:, :, None], float(lut[0]))
    return bias


def edge_bias_matrix(
    nodes: torch.Tensor,
    kinds: torch.Tensor,
    ev: EntityVocab,
    index: HopIndex | None,
    mode: str,
) -> torch.Tensor:
    """R `[B, L, L]` float32 for a padded batch of node ids (docs/method.md 5.4).

    `seed`: second-order rows exact from `index` (entity pairs on and below the diagonal,
    mirrored), other rows the by-type pattern, which is exact there; `type`: the pattern
    everywhere; `none`: zeros.
    """
    B, L = nodes.shape
    if mode == "none":
        return torch.zeros(B, L, L)
    if mode not in ("seed", "type"):
        raise ValueError(f"edge_bias {mode!r}: expected seed, none or type here")
    if index is None:
        raise ValueError(f"edge_bias {mode!r} needs a RelationIndex")
    lut = torch.from_numpy(index_lut(index))
    bias = type_pattern(nodes, ev.n_users, lut)
    graph_rows = _graph_rows(kinds)
    if mode == "seed" and bool(graph_rows.any()):
        rows, i, j, h = _pair_hops(nodes, graph_rows, index, same_node=False)  # same node: lut[0]
        vals = lut[torch.from_numpy(h)]
        bias[rows, i, j] = vals
        bias[rows, j, i] = vals
    return bias


def _graph_rows(kinds: torch.Tensor) -> torch.Tensor:
    return torch.isin(kinds, torch.tensor(sorted(GRAPH_KINDS), dtype=kinds.dtype))


class EdgeAwareCollator:
    """Turns encoded examples (`Examples[n]` dicts) into a model batch.

    Output keys: input_ids, node_ids, labels (token id for content kinds, item index for
    collaborative, IGNORE_INDEX elsewhere), lengths, prompt_lengths, kinds, reg_nodes (entity
    occurrences to regularize, flat), targets
    (`[B, n_items]` multi-hot, only for fine-tuning/evaluation batches) and either
    attention_mask `[B, 1, L, L]` or, for `learned`, hop_classes `[B, L, L]`.
    """

    def __init__(
        self,
        ev: EntityVocab,
        index: HopIndex | None,
        edge_bias: str = "seed",
        pad_id: int = 0,
    ) -> None:
        if edge_bias not in EDGE_BIAS_MODES:
            raise ValueError(f"edge_bias must be one of {EDGE_BIAS_MODES}, got {edge_bias!r}")
        if edge_bias != "none" and index is None:
            raise ValueError(f"edge_bias {edge_bias!r} needs a RelationIndex")
        self.ev = ev
        self.index = index
        self.edge_bias = edge_bias
        self.hop_index = exact_hop_index(index) if edge_bias == "learned" else index
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ev = self.ev
        B = len(batch)
        lens = np.array([len(x["input_ids"]) for x in batch], dtype=np.int64)
        L = int(lens.max())
        ids = np.full((B, L), self.pad_id, dtype=np.int64)
        valid = np.arange(L)[None, :] < lens[:, None]
        ids[valid] = np.concatenate([x["input_ids"] for x in batch])
        plen = np.array([x["prompt_len"] for x in batch], dtype=np.int64)
        kinds = np.array([x["kind"] for x in batch], dtype=np.int64)
        nodes = np.where(valid & (ids >= ev.vocab), ids - ev.vocab, -1)

        is_main = valid & (np.arange(L)[None, :] >= plen[:, None])
        collab = (kinds == KIND["collab"])[:, None]
        labels = np.where(is_main, np.where(collab, ids - ev.vocab - ev.n_users, ids), IGNORE_INDEX)

        # regularization set: every entity occurrence, plus (fine-tuning) each train item once
        r_rows, r_pos = np.nonzero(nodes >= 0)
        reg_nodes = [nodes[r_rows, r_pos]]
        for x in batch:
            if x["kind"] == KIND["finetune"]:
                reg_nodes.append(ev.n_users + np.asarray(x["items"], dtype=np.int64))

        out: dict[str, torch.Tensor] = {
            "input_ids": torch.from_numpy(ids),
            "node_ids": torch.from_numpy(nodes),
            "labels": torch.from_numpy(labels),
            "lengths": torch.from_numpy(lens),
            "prompt_lengths": torch.from_numpy(plen),
            "kinds": torch.from_numpy(kinds),
            "reg_nodes": torch.from_numpy(np.concatenate(reg_nodes).astype(np.int64)),
        }
        if any(x["kind"] in (KIND["finetune"], KIND["eval"]) for x in batch):
            tgt = torch.zeros(B, ev.n_items)
            rows = np.concatenate([np.full(len(x["items"]), n) for n, x in enumerate(batch)]).astype(np.int64)
            cols = np.concatenate([np.asarray(x["items"], dtype=np.int64) for x in batch])
            tgt[torch.from_numpy(rows), torch.from_numpy(cols)] = 1.0
            out["targets"] = tgt

        nodes_t, kinds_t = out["node_ids"], out["kinds"]
        if self.edge_bias == "learned":
            out["hop_classes"] = hop_classes(nodes_t, _graph_rows(kinds_t), ev.n_users, self.hop_index)
        else:
            bias = edge_bias_matrix(nodes_t, kinds_t, ev, self.index, self.edge_bias)
            out["attention_mask"] = additive_mask(bias, out["lengths"])
        return out
