"""The edge bias R and the additive mask built by the collator (docs/method.md 3.3 and 5.3)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import shortest_path

from llm4rec.core.constants import MASK_MIN
from llm4rec.graph.relation import RelationIndex, relation_lut
from llm4rec.model.collate import EdgeAwareCollator, hop_classes
from llm4rec.model.encoding import (
    build_collab_examples,
    build_content_examples,
    build_eval_examples,
    build_finetune_examples,
)
from llm4rec.model.tokenization import EntityVocab


class DenseRelation:
    """Test oracle: all-pairs BFS on the dense bipartite graph + the closed form of docs/method.md 3.3."""

    def __init__(self, train_csr: sp.spmatrix, max_hops: int = 5) -> None:
        m = sp.csr_matrix(train_csr)
        self.n_users, self.n_items = m.shape
        self.max_hops = max_hops
        adj = sp.bmat([[None, m], [m.T, None]]).tocsr()
        self.adj = (adj.toarray() > 0).astype(np.float64)
        self.dist = shortest_path(adj, unweighted=True, directed=False)
        finite = np.isfinite(self.dist)
        self.d6 = int(min(6, self.dist[finite].max())) if finite.all() else 6

    def hops(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = self.dist[np.asarray(a), np.asarray(b)]
        return np.where(np.isfinite(d), np.minimum(d, self.max_hops + 1), self.max_hops + 1).astype(np.int64)

    def relation(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = self.dist[np.asarray(a), np.asarray(b)]
        m = 6 - self.d6
        a_ = self.adj[np.asarray(a), np.asarray(b)]
        t = (np.maximum(0.0, 6.0 - np.where(np.isfinite(d), d, 99)) - m) / (6 - m)
        return ((a_ + t) / (1 + (5 - m) / (6 - m))).astype(np.float32)


def path_graph(n: int) -> sp.csr_matrix:
    """u0 - i0 - u1 - i1 - ... : item k and item k+j are 2j hops apart (diameter >= 6)."""
    rows = np.concatenate([np.arange(n), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.arange(n - 1)])
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


def triple_loop_bias(nodes: np.ndarray, index) -> np.ndarray:
    """The seed's per-element loop: R[b, i, j] = relation(node_i, node_j) for entity pairs."""
    B, L = nodes.shape
    out = np.zeros((B, L, L), dtype=np.float32)
    for b in range(B):
        for i in range(L):
            for j in range(L):
                if nodes[b, i] >= 0 and nodes[b, j] >= 0:
                    out[b, i, j] = index.relation(np.array([nodes[b, i]]), np.array([nodes[b, j]]))[0]
    return out


@pytest.fixture(params=["dense_oracle", "relation_index"])
def make_index(request):
    """Each bias test runs on the test's dense oracle and on the real `RelationIndex`."""
    return DenseRelation if request.param == "dense_oracle" else RelationIndex


def _so_example(tok, ev, item_ids, kind="brand", value="Acme", max_len=64):
    so = pd.DataFrame({"kind": [kind], "value": [value], "item_ids": [item_ids]})
    empty = pd.DataFrame({"uid": [], "iid": [], "split": [], "review_text": []})
    return build_content_examples(pd.DataFrame({"iid": []}), empty, so, tok, ev, max_len)[0]


def test_second_order_hand_values(tok, make_index):
    idx = make_index(path_graph(8))
    assert idx.d6 == 6
    ev = EntityVocab(300, 8, 8)
    ex = _so_example(tok, ev, [0, 1, 2, 3])
    batch = EdgeAwareCollator(ev, idx, "seed")([ex])
    mask = batch["attention_mask"][0, 0]
    nodes = batch["node_ids"][0]
    pos = torch.nonzero(nodes >= 0).flatten()
    assert len(pos) == 4
    expect = {0: 6 / 11, 2: 4 / 11, 4: 2 / 11, 6: 0.0}
    for a in range(4):
        for b in range(a + 1):
            assert mask[pos[a], pos[b]].item() == pytest.approx(expect[2 * (a - b)], abs=1e-7)
    # above the diagonal: causal mask; text rows/cols: 0 below the diagonal
    L = mask.shape[0]
    upper = torch.ones(L, L, dtype=torch.bool).triu(1)
    assert (mask[upper] == MASK_MIN).all()
    ent = nodes >= 0
    text_pair = ~(ent[:, None] & ent[None, :]) & ~upper
    assert (mask[text_pair] == 0).all()
    assert batch["attention_mask"].shape == (1, 1, L, L) and batch["attention_mask"].dtype == torch.float32


def test_padded_and_unpadded_agree(tok, make_index):
    idx = make_index(path_graph(8))
    ev = EntityVocab(300, 8, 8)
    short = _so_example(tok, ev, [1, 3, 4])
    long = _so_example(tok, ev, [0, 1, 2, 3, 4, 5, 6, 7], kind="category", value="Home and Kitchen")
    col = EdgeAwareCollator(ev, idx, "seed")
    alone = col([short])["attention_mask"][0, 0]
    both = col([long, short])
    n = len(short["input_ids"])
    torch.testing.assert_close(both["attention_mask"][1, 0, :n, :n], alone, rtol=0, atol=0)
    # padding keys are blocked for every query, padded rows still see their real prefix
    assert (both["attention_mask"][1, 0, :, n:] == MASK_MIN).all()
    assert int(both["lengths"][1]) == n and (both["labels"][1, n:] == -100).all()


def test_vectorized_equals_triple_loop(tok, make_index):
    rng = np.random.default_rng(0)
    m = (rng.random((12, 15)) < 0.15).astype(float)
    m[np.arange(12), rng.integers(0, 15, 12)] = 1
    idx = make_index(sp.csr_matrix(m))
    ev = EntityVocab(300, 12, 15)
    batch_ex = [_so_example(tok, ev, list(rng.choice(15, size=k, replace=False))) for k in (2, 5, 9, 15)]
    tr = [np.flatnonzero(r) for r in m]
    batch_ex += [build_finetune_examples(tr, tok, ev, 64, seed=0, epoch=0, hide_frac=0.2)[u] for u in (0, 3)]
    batch_ex += [build_collab_examples(tr, tok, ev, 64)[1], build_eval_examples(tr, tok, ev, 64)[2]]
    batch = EdgeAwareCollator(ev, idx, "seed")(batch_ex)
    ref = triple_loop_bias(batch["node_ids"].numpy(), idx)
    L = ref.shape[1]
    lower = np.tril(np.ones((L, L), dtype=bool))
    valid = np.arange(L)[None, :] < batch["lengths"].numpy()[:, None]
    keep = lower[None] & valid[:, None, :]
    got = batch["attention_mask"][:, 0].numpy()
    np.testing.assert_array_equal(got[keep], ref[keep])


def test_type_pattern_is_exact_outside_second_order(tok, make_index):
    """One user + own train items: by-type classes equal the graph's hop distances."""
    rng = np.random.default_rng(1)
    m = (rng.random((10, 20)) < 0.2).astype(float)
    m[:, 0] = 1
    idx = make_index(sp.csr_matrix(m))
    ev = EntityVocab(300, 10, 20)
    tr = [np.flatnonzero(r) for r in m]
    exs = [build_finetune_examples(tr, tok, ev, 64, 0, 0, hide_frac=0.2)[u] for u in range(10)]
    exs += [build_collab_examples(tr, tok, ev, 64)[u] for u in range(10)]
    col = EdgeAwareCollator(ev, idx, "seed")
    b = col(exs)
    fast = hop_classes(b["node_ids"], torch.zeros(len(exs), dtype=torch.bool), ev.n_users, idx)
    exact = hop_classes(b["node_ids"], torch.ones(len(exs), dtype=torch.bool), ev.n_users, idx)
    L = fast.shape[1]
    lower = torch.ones(L, L, dtype=torch.bool).tril()
    torch.testing.assert_close(fast[:, lower], exact[:, lower])


def test_type_mode_and_none(tok, make_index):
    idx = make_index(path_graph(8))
    ev = EntityVocab(300, 8, 8)
    ex = _so_example(tok, ev, [0, 2, 4, 6])
    t = EdgeAwareCollator(ev, idx, "type")([ex])["attention_mask"][0, 0]
    nodes = torch.from_numpy(np.asarray(ev.node_of(ex["input_ids"])))
    pos = torch.nonzero(nodes >= 0).flatten()
    for a in range(4):
        for b in range(a + 1):
            assert t[pos[a], pos[b]].item() == pytest.approx(6 / 11 if a == b else 4 / 11, abs=1e-7)
    n = EdgeAwareCollator(ev, None, "none")([ex])["attention_mask"][0, 0]
    L = n.shape[0]
    lower = torch.ones(L, L, dtype=torch.bool).tril()
    assert (n[lower] == 0).all() and (n[~lower] == MASK_MIN).all()
    # on a non-second-order prompt `type` equals `seed`
    tr = [np.array([k - 1, k]) if k else np.array([0]) for k in range(8)]
    fe = build_finetune_examples(tr, tok, ev, 64, 0, 0, hide_frac=0.2)[5]
    s = EdgeAwareCollator(ev, idx, "seed")([fe])["attention_mask"]
    ty = EdgeAwareCollator(ev, idx, "type")([fe])["attention_mask"]
    torch.testing.assert_close(s, ty, rtol=0, atol=0)


def test_small_diameter_changes_values(tok, make_index):
    """A complete bipartite K(2,3): diameter 2, D6 = 2, every value differs from D6 = 6."""
    idx = make_index(sp.csr_matrix(np.ones((2, 3))))
    assert idx.d6 == 2
    lut = relation_lut(idx.max_hops, idx.d6)
    np.testing.assert_allclose(lut[:3], idx.relation(np.array([0, 0, 2]), np.array([0, 2, 3])), rtol=0, atol=1e-7)
    # m = 4: self (0 + 2/2) / 1.5 = 2/3, edge (1 + 1/2) / 1.5 = 1, two hops 0
    np.testing.assert_allclose(lut[:3], [2 / 3, 1.0, 0.0], rtol=0, atol=1e-7)
    ev = EntityVocab(300, 2, 3)
    ex = _so_example(tok, ev, [0, 1, 2])
    b = EdgeAwareCollator(ev, idx, "seed")([ex])
    ref = triple_loop_bias(b["node_ids"].numpy(), idx)[0]
    L = ref.shape[0]
    lower = np.tril(np.ones((L, L), dtype=bool))
    np.testing.assert_array_equal(b["attention_mask"][0, 0].numpy()[lower], ref[lower])


def test_labels_and_regularization_sets(tok):
    ev = EntityVocab(300, 3, 5)
    tr = [np.array([0, 2]), np.array([1, 3, 4]), np.array([4])]
    col = EdgeAwareCollator(ev, None, "none")
    c = build_collab_examples(tr, tok, ev, 64)
    b = col([c[0], c[1]])
    plen = b["prompt_lengths"]
    assert (b["labels"][0, : plen[0]] == -100).all()
    assert b["labels"][0, plen[0] : plen[0] + 2].tolist() == [0, 2]
    assert b["labels"][1, plen[1] : plen[1] + 3].tolist() == [1, 3, 4]
    # prompt user + each main item, nodes = item + U
    assert sorted(b["reg_nodes"].tolist()) == sorted([0, 3, 5, 1, 4, 6, 7])
    f = build_finetune_examples(tr, tok, ev, 64, 0, 0, hide_frac=0.2)
    b = col([f[1]])
    kept = [n for n in b["node_ids"][0].tolist() if n >= 3]
    assert sorted(b["reg_nodes"].tolist()) == sorted([1, 1] + kept + [4, 6, 7])
    assert b["targets"].tolist() == [[0, 1, 0, 1, 1]]
    assert (b["labels"] == -100).all()
