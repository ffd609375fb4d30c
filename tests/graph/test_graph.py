"""RelationIndex against the seed's dense computation, written here as the oracle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse import csgraph

from llm4rec.graph import search
from llm4rec.graph.relation import RelationIndex, build_relation_index, graph_stats, relation_from_hops, relation_table


def seed_dense(b: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """The seed code: all-pairs distances over the dense adjacency, then its two min-max steps."""
    u, i = b.shape
    n = u + i
    a = np.zeros((n, n))
    bb = (b.toarray() != 0).astype(float)
    a[:u, u:] = bb
    a[u:, :u] = bb.T
    d = csgraph.shortest_path(a, unweighted=True, directed=False)  # 0 diagonal, inf unreachable
    m = np.maximum(6 - d, 0)

    def minmax(x):
        return (x - x.min()) / (x.max() - x.min())

    with np.errstate(invalid="ignore", divide="ignore"):
        r = minmax(a + minmax(m))
    return d, r


def _random(u, i, density, rng):
    return sp.random(u, i, density=density, format="csr", random_state=int(rng.integers(2**31)))


def _chain(n_users, n_items):
    """user0 - item0 - user1 - item1 - ...: a path of n_users + n_items - 1 hops."""
    rows = np.concatenate([np.arange(n_users), np.arange(1, n_users)])
    cols = np.concatenate([np.arange(n_users), np.arange(n_users - 1)])
    keep = cols < n_items
    return sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n_users, n_items))


def _graphs():
    rng = np.random.default_rng(20240215)
    out = []
    for k in range(6):  # sparse
        out.append((f"sparse{k}", _random(int(rng.integers(8, 30)), int(rng.integers(8, 30)), 0.08, rng)))
    for k in range(6):  # dense: small diameter
        out.append((f"dense{k}", _random(int(rng.integers(4, 15)), int(rng.integers(4, 15)), 0.6, rng)))
    for k in range(3):  # disconnected parts and isolated nodes
        blocks = [_random(6, 5, 0.5, rng), _chain(4, 4), sp.csr_matrix((2, 3))]
        out.append((f"parts{k}", sp.block_diag(blocks, format="csr")))
    out.append(("chain9", _chain(5, 5)))
    out.append(("chain15", _chain(8, 8)))
    out.append(("chain_odd", _chain(7, 6)))
    out.append(("star_user", sp.csr_matrix(np.ones((1, 12)))))
    out.append(("star_item", sp.csr_matrix(np.ones((10, 1)))))
    star2 = np.zeros((8, 9))
    star2[0, :] = 1
    star2[:, 0] = 1
    out.append(("double_star", sp.csr_matrix(star2)))
    out.append(("complete_3x4", sp.csr_matrix(np.ones((3, 4)))))
    out.append(("complete_1x2", sp.csr_matrix(np.ones((1, 2)))))
    out.append(("path_u_i_u", sp.csr_matrix(np.ones((2, 1)))))
    out.append(("no_edges", sp.csr_matrix((3, 2))))
    out.append(("one_by_one_empty", sp.csr_matrix((1, 1))))
    out.append(("diameter6_cycle", sp.csr_matrix(np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1]]))))
    ring = np.zeros((6, 6))  # a 12-cycle: diameter 6
    ring[np.arange(6), np.arange(6)] = 1
    ring[np.arange(6), (np.arange(6) + 1) % 6] = 1
    out.append(("ring12", sp.csr_matrix(ring)))
    ring5 = np.zeros((5, 5))  # a 10-cycle: diameter 5
    ring5[np.arange(5), np.arange(5)] = 1
    ring5[np.arange(5), (np.arange(5) + 1) % 5] = 1
    out.append(("ring10", sp.csr_matrix(ring5)))
    return out


GRAPHS = _graphs()


def _all_pairs(n):
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return a, b


def test_graph_families_cover_the_cases():
    d6 = {name: RelationIndex(b).d6 for name, b in GRAPHS}
    assert len(GRAPHS) >= 20
    assert {2, 3, 4, 5, 6} <= set(d6.values())
    assert d6["chain15"] == 6 and d6["no_edges"] == 6 and d6["complete_3x4"] == 2


@pytest.mark.parametrize("hub_threshold", [None, 0, 3])
@pytest.mark.parametrize("name,b", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_relation_and_hops_match_dense_seed(name, b, hub_threshold):
    d, r_seed = seed_dense(b)
    n = d.shape[0]
    a, c = _all_pairs(n)
    finite = d[np.isfinite(d)]
    diameter = np.inf if np.isinf(d).any() else finite.max()
    for max_hops in (5, 1, 3, 8):
        idx = RelationIndex(b, max_hops=max_hops, hub_threshold=hub_threshold)
        assert idx.d6 == min(6, diameter)
        expected = np.where(np.isinf(d), max_hops + 1, np.minimum(d, max_hops + 1))
        np.testing.assert_array_equal(idx.hops(a, c), expected)
        r = idx.relation(a, c)
        assert r.dtype == np.float32 and r.shape == (n, n)
        if np.isnan(r_seed).any():
            # Only the single-edge graph: every seed value is 1, min-max divides 0 by 0.
            assert name == "complete_1x2" or name == "path_u_i_u" or b.shape == (1, 1)
            assert b.nnz == 1 and np.isnan(r_seed).all()
            np.testing.assert_array_equal(r, np.ones((n, n), dtype=np.float32))
        else:
            np.testing.assert_allclose(r, r_seed, rtol=0, atol=1e-6)


def test_single_edge_graph_is_the_only_nan_case():
    single = sp.csr_matrix(np.ones((1, 1)))
    _, r = seed_dense(single)
    assert np.isnan(r).all()
    idx = RelationIndex(single)
    assert idx.d6 == 1
    np.testing.assert_array_equal(idx.relation([0, 0, 1], [0, 1, 0]), np.ones(3, dtype=np.float32))


def test_no_edges_keeps_the_seed_diagonal():
    idx = RelationIndex(sp.csr_matrix((3, 2)))
    _, r = seed_dense(sp.csr_matrix((3, 2)))
    np.testing.assert_array_equal(np.diag(r), np.ones(5))
    np.testing.assert_array_equal(idx.relation(np.arange(5), np.arange(5)), np.ones(5, dtype=np.float32))
    assert idx.relation([0], [4])[0] == 0


def test_larger_power_law_graph_sampled_pairs(monkeypatch):
    """Chunking paths (tiny budgets) and multi-word BFS on a graph with hubs and long tails."""
    monkeypatch.setattr(search, "CHUNK_ENTRIES", 40)
    monkeypatch.setattr(search, "BFS_BYTES", 8)
    rng = np.random.default_rng(7)
    u, i, e = 260, 180, 900
    pu = rng.pareto(1.5, u) + 1
    pi = rng.pareto(1.2, i) + 1
    rows = rng.choice(u, e, p=pu / pu.sum())
    cols = rng.choice(i, e, p=pi / pi.sum())
    b = sp.csr_matrix((np.ones(e), (rows, cols)), shape=(u, i))
    d, r_seed = seed_dense(b)
    n = u + i
    a = rng.integers(0, n, 20000)
    c = rng.integers(0, n, 20000)
    items = rng.integers(u, n, (2, 20000))
    a = np.concatenate([a, items[0]])
    c = np.concatenate([c, items[1]])
    for ht in (None, 5):
        idx = RelationIndex(b, max_hops=9, hub_threshold=ht)
        if ht is not None:
            assert 0 < len(idx._hubs) < i
        exp = np.where(np.isinf(d[a, c]), 10, np.minimum(d[a, c], 10))
        np.testing.assert_array_equal(idx.hops(a, c), exp)
        np.testing.assert_allclose(idx.relation(a, c), r_seed[a, c], atol=1e-6, rtol=0)


def test_relation_table_matches_spec_values_for_d6_6():
    t = relation_table(6)
    np.testing.assert_allclose(t, np.array([6, 11, 4, 3, 2, 1, 0]) / 11, atol=1e-7)
    np.testing.assert_allclose(
        relation_from_hops(np.array([0, 1, 2, 7, 100]), 6), np.array([6, 11, 4, 0, 0]) / 11, atol=1e-7
    )
    with pytest.raises(ValueError):
        relation_table(0)


def test_type_pattern_equals_relation_on_ordinary_prompts():
    rng = np.random.default_rng(3)
    for _, b in GRAPHS:
        idx = RelationIndex(b)
        if idx.n_edges == 0:
            continue
        coo = b.tocoo()
        k = int(rng.integers(len(coo.row)))
        user, item = int(coo.row[k]), int(coo.col[k]) + idx.n_users
        other = b.getrow(user).indices + idx.n_users
        pattern = relation_from_hops(np.array([0, 1, 2]), idx.d6, idx.has_edges)
        assert idx.relation([user], [user])[0] == pattern[0]
        assert idx.relation([user], [item])[0] == pattern[1]
        for j in other[other != item]:
            assert idx.relation([item], [j])[0] == pattern[2]


def test_queries_broadcast_and_validate():
    idx = RelationIndex(_chain(4, 4))
    assert idx.hops(np.array([[0], [1]]), np.array([4, 5, 6])).shape == (2, 3)
    assert idx.hops([], []).shape == (0,)
    with pytest.raises(IndexError):
        idx.hops([0], [8])
    with pytest.raises(ValueError):
        RelationIndex(sp.csr_matrix((0, 3)))


def test_save_load_roundtrip_is_exact_and_reproducible(tmp_path):
    rng = np.random.default_rng(11)
    b = _random(40, 30, 0.1, rng)
    idx = RelationIndex(b, hub_threshold=4)
    files = idx.save(tmp_path / "a")
    assert sorted(p.name for p in files) == ["relation.json", "relation.npz"]
    RelationIndex(b, hub_threshold=4).save(tmp_path / "b")
    for name in ("relation.npz", "relation.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with np.load(tmp_path / "a" / "relation.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    loaded = RelationIndex.load(tmp_path / "a")
    a, c = _all_pairs(70)
    np.testing.assert_array_equal(loaded.hops(a, c), idx.hops(a, c))
    np.testing.assert_array_equal(loaded.relation(a, c), idx.relation(a, c))
    assert (loaded.d6, loaded.n_users, loaded.n_items, loaded.max_hops) == (idx.d6, 40, 30, 5)
    assert RelationIndex.load(tmp_path / "a", max_hops=2).hops([0], [0 + 40])[0] <= 3


def _interactions(rng, n_users=30, n_items=25):
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, 5, replace=False)
        rows += [(u, int(it), s) for it, s in zip(items, ["train", "train", "train", "val", "test"])]
    return pd.DataFrame(rows, columns=["uid", "iid", "split"])


def test_eval_edges_do_not_leak_into_default_graph(tmp_path):
    rng = np.random.default_rng(5)
    inter = _interactions(rng)
    changed = inter.copy()
    ev = changed["split"] != "train"
    changed.loc[ev, "iid"] = rng.integers(0, 25, int(ev.sum()))
    changed = pd.concat([changed, pd.DataFrame({"uid": [0, 1], "iid": [3, 4], "split": ["val", "test"]})])
    a, c = _all_pairs(55)

    base = build_relation_index(inter, 30, 25)
    other = build_relation_index(changed, 30, 25)
    base.save(tmp_path / "base")
    other.save(tmp_path / "other")
    for name in ("relation.npz", "relation.json"):
        assert (tmp_path / "base" / name).read_bytes() == (tmp_path / "other" / name).read_bytes()
    np.testing.assert_array_equal(base.relation(a, c), other.relation(a, c))
    train = inter[inter["split"] == "train"]
    b_train = sp.csr_matrix((np.ones(len(train)), (train["uid"], train["iid"])), shape=(30, 25))
    np.testing.assert_allclose(base.relation(a, c), seed_dense(b_train)[1], atol=1e-6)

    leaky = build_relation_index(inter, 30, 25, include_eval_edges=True)
    leaky_other = build_relation_index(changed, 30, 25, include_eval_edges=True)
    leaky.save(tmp_path / "leaky")
    leaky_other.save(tmp_path / "leaky_other")
    assert (tmp_path / "leaky" / "relation.npz").read_bytes() != (
        tmp_path / "leaky_other" / "relation.npz"
    ).read_bytes()
    assert not np.array_equal(leaky.relation(a, c), leaky_other.relation(a, c))
    b_all = sp.csr_matrix((np.ones(len(inter)), (inter["uid"], inter["iid"])), shape=(30, 25))
    np.testing.assert_allclose(leaky.relation(a, c), seed_dense(b_all)[1], atol=1e-6)
    assert json.loads((tmp_path / "leaky" / "relation.json").read_text())["include_eval_edges"] is True


def test_build_relation_index_rejects_bad_input():
    bad = pd.DataFrame({"uid": [0], "iid": [5], "split": ["train"]})
    with pytest.raises(ValueError):
        build_relation_index(bad, 2, 3)
    with pytest.raises(ValueError):
        build_relation_index(pd.DataFrame({"uid": [0], "iid": [0], "split": ["dev"]}), 2, 3)


def test_graph_stats_histogram_is_seeded_and_exact():
    b = _chain(8, 8)
    idx = RelationIndex(b)
    s1 = graph_stats(idx, 500, seed=1)
    assert s1 == graph_stats(idx, 500, seed=1)
    assert (s1["nodes"], s1["users"], s1["items"], s1["edges"], s1["d6"]) == (16, 8, 8, 15, 6)
    hist = s1["item_pair_hops"]["histogram"]
    assert sum(hist.values()) == 500 and hist["0"] == 0
    assert set(hist) == {"0", "1", "2", "3", "4", "5", ">5"}
    # Items on a chain: item k and item l are 2|k-l| apart.
    rng = np.random.default_rng(1)
    i = rng.integers(0, 8, 500)
    j = (i + rng.integers(1, 8, 500)) % 8
    d = 2 * np.abs(i - j)
    assert hist["2"] == int((d == 2).sum()) and hist["4"] == int((d == 4).sum())
    assert hist[">5"] == int((d >= 6).sum())
    json.dumps(s1)
