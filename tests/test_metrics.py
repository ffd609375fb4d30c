"""Metrics against an independent pure-Python oracle (full stable sort, explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import evaluate_scores

from llm4rec.metrics import RankingEvaluator, ndcg_at_k, recall_at_k, selection_score, top_k


# ---------------------------------------------------------------- oracle
def ref_rank(scores_row, excluded_row, k):
    """Candidates sorted by (-score, item id), first min(k, I) positions, -1 padded."""
    n_items = len(scores_row)
    cand = [i for i in range(n_items) if not excluded_row[i]]
    cand.sort(key=lambda i: (-float(scores_row[i]), i))
    kk = min(k, n_items)
    out = cand[:kk]
    return out + [-1] * (kk - len(out))


def ref_recall(ranked, targets, k):
    t = set(int(x) for x in targets)
    if not t:
        return None
    hits = sum(1 for i in ranked[:k] if i in t)
    return hits / min(k, len(t))


def ref_ndcg(ranked, targets, k):
    t = set(int(x) for x in targets)
    if not t:
        return None
    dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(ranked[:k]) if i in t)
    idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(t))))
    return dcg / idcg


def ref_evaluate(scores, train, target, ks_recall, ks_ndcg):
    """Means over users with targets, straight from the definitions."""
    sums = {f"Recall@{k}": 0.0 for k in ks_recall} | {f"NDCG@{k}": 0.0 for k in ks_ndcg}
    n = 0
    for u in range(scores.shape[0]):
        tgt = np.flatnonzero(target[u])
        if tgt.size == 0:
            continue
        n += 1
        kmax = max(*ks_recall, *ks_ndcg)
        ranked = ref_rank(scores[u], train[u].astype(bool), kmax)
        for k in ks_recall:
            sums[f"Recall@{k}"] += ref_recall(ranked, tgt, k)
        for k in ks_ndcg:
            sums[f"NDCG@{k}"] += ref_ndcg(ranked, tgt, k)
    return {m: v / n for m, v in sums.items()}, n


# ---------------------------------------------------------------- top_k
def test_top_k_hand_ties_cross_boundary():
    # Item 0 and 3 tie at 5.0 and sit on the k=2 boundary together with item 4.
    scores = torch.tensor([[5.0, 1.0, 7.0, 5.0, 5.0, 0.0]])
    items, values = top_k(scores, 2)
    assert items.tolist() == [[2, 0]]
    assert values.tolist() == [[7.0, 5.0]]
    items, _ = top_k(scores, 4)
    assert items.tolist() == [[2, 0, 3, 4]]


def test_top_k_all_equal_scores_is_id_order():
    scores = torch.zeros((3, 50))
    items, _ = top_k(scores, 7)
    assert items.tolist() == [list(range(7))] * 3


def test_top_k_exclusion_and_padding():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    exclude = torch.tensor([[True, False, True, True], [False, False, False, False]])
    items, values = top_k(scores, 10)  # K above the candidate count
    assert items.shape == (2, 4)
    items, values = top_k(scores, 3, exclude)
    assert items.tolist() == [[1, -1, -1], [0, 1, 2]]
    assert values[0, 0].item() == 2.0 and torch.isneginf(values[0, 1:]).all()


def test_top_k_model_neg_inf_is_still_a_candidate():
    scores = torch.tensor([[float("-inf"), 1.0, float("-inf"), 2.0]])
    exclude = torch.tensor([[False, False, True, False]])
    items, values = top_k(scores, 4, exclude)
    assert items.tolist() == [[3, 1, 0, -1]]
    assert torch.isneginf(values[0, 2])


def test_top_k_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        top_k(torch.tensor([[1.0, float("nan")]]), 1)


@pytest.mark.parametrize("seed", range(6))
def test_top_k_random_against_oracle(seed):
    rng = np.random.default_rng(seed)
    n_rows, n_items = 40, int(rng.integers(1, 60))
    # Few distinct values: ties everywhere, including across the K boundary.
    scores = rng.integers(0, 4, size=(n_rows, n_items)).astype(np.float32)
    if seed % 2:
        scores[rng.random(scores.shape) < 0.1] = -np.inf
        scores[rng.random(scores.shape) < 0.05] = np.inf
    exclude = rng.random((n_rows, n_items)) < rng.uniform(0, 0.9)
    exclude[0] = True  # a row with no candidate at all
    for k in (1, 3, 20, n_items, n_items + 7):
        items, values = top_k(torch.from_numpy(scores), k, torch.from_numpy(exclude))
        for b in range(n_rows):
            expected = ref_rank(scores[b], exclude[b], k)
            assert items[b].tolist() == expected
            for j, i in enumerate(expected):
                want = scores[b, i] if i >= 0 else -np.inf
                assert values[b, j].item() == want


def test_top_k_float64_and_half_inputs():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 3, size=(5, 30))
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        items, _ = top_k(torch.tensor(base, dtype=dtype), 6)
        for b in range(5):
            assert items[b].tolist() == ref_rank(base[b], np.zeros(30, bool), 6)


def test_top_k_signed_zeros_infinities_and_boundary_ties_against_oracle():
    # -0.0 and 0.0 are one score (ties by id); +inf and -inf candidates; a tie exactly at
    # position k+1 and one that starts inside the selection and runs past it.
    scores = torch.tensor(
        [
            [0.0, -0.0, 1.0, -0.0, 0.0, 2.0],
            [float("inf"), 1.0, float("inf"), float("-inf"), 1.0, float("-inf")],
            [3.0, 2.0, 2.0, 1.0, 2.0, 2.0],
        ]
    )
    exclude = torch.tensor(
        [
            [False, False, False, True, False, False],
            [False, True, False, False, False, False],
            [False, False, True, False, False, False],
        ]
    )
    for k in range(1, 8):
        for ex in (None, exclude):
            items, values = top_k(scores, k, ex)
            for b in range(scores.shape[0]):
                ex_row = np.zeros(6, bool) if ex is None else ex[b].numpy()
                expected = ref_rank(scores[b].numpy(), ex_row, k)
                assert items[b].tolist() == expected, (k, b)
                want = [float(scores[b, i]) if i >= 0 else -np.inf for i in expected]
                assert values[b].tolist() == want


# ---------------------------------------------------------------- recall / ndcg
def test_recall_ndcg_hand_values():
    ranked = np.array([[4, 2, 7, -1], [1, 0, 3, 2]])
    targets = [np.array([2, 9]), np.array([3])]
    # user 0: one hit at rank 2 of 2 targets; user 1: hit at rank 3.
    np.testing.assert_allclose(recall_at_k(ranked, targets, 2), [0.5, 0.0])
    np.testing.assert_allclose(recall_at_k(ranked, targets, 4), [0.5, 1.0])
    ndcg = ndcg_at_k(ranked, targets, 4)
    np.testing.assert_allclose(ndcg, [(1 / math.log2(3)) / (1 + 1 / math.log2(3)), 1 / math.log2(4)])
    # Fewer targets than K: the denominator is |targets|, not K.
    assert recall_at_k(np.array([[5, 6, 7]]), [np.array([5])], 3)[0] == 1.0


def test_no_targets_gives_nan():
    ranked = np.array([[0, 1], [1, 0]])
    csr = sp.csr_matrix(np.array([[0, 1], [0, 0]]))
    r = recall_at_k(ranked, csr, 2)
    n = ndcg_at_k(ranked, csr, 2)
    assert r[0] == 1.0 and np.isnan(r[1])
    assert n[0] == pytest.approx(1 / math.log2(3)) and np.isnan(n[1])


@pytest.mark.parametrize("seed", range(4))
def test_recall_ndcg_random_against_oracle(seed):
    rng = np.random.default_rng(100 + seed)
    n_rows, n_items = 30, 80
    ranked = np.stack([rng.permutation(n_items)[:25] for _ in range(n_rows)])
    ranked[rng.random(ranked.shape) < 0.05] = -1  # padding positions never hit
    dense = rng.random((n_rows, n_items)) < rng.uniform(0.0, 0.2, size=(n_rows, 1))
    csr = sp.csr_matrix(dense.astype(np.float32))
    lists = [np.flatnonzero(row) for row in dense]
    for k in (1, 5, 25, 60):
        for targets in (csr, lists):
            rec = recall_at_k(ranked, targets, k)
            ndcg = ndcg_at_k(ranked, targets, k)
            for b in range(n_rows):
                want_r = ref_recall(list(ranked[b]), lists[b], k)
                want_n = ref_ndcg(list(ranked[b]), lists[b], k)
                if want_r is None:
                    assert np.isnan(rec[b]) and np.isnan(ndcg[b])
                else:
                    assert rec[b] == pytest.approx(want_r)
                    assert ndcg[b] == pytest.approx(want_n)


# ---------------------------------------------------------------- evaluator
def _random_split(seed, n_users=57, n_items=45):
    rng = np.random.default_rng(seed)
    train = (rng.random((n_users, n_items)) < 0.2).astype(np.float32)
    target = ((rng.random((n_users, n_items)) < 0.08) & (train == 0)).astype(np.float32)
    target[:5] = 0  # users without targets
    scores = rng.integers(0, 5, size=(n_users, n_items)).astype(np.float32)
    return train, target, scores


@pytest.mark.parametrize("seed", range(3))
def test_evaluator_matches_oracle(seed):
    train, target, scores = _random_split(seed)
    ks_recall, ks_ndcg = (3, 20, 40), (10, 100)  # 40 and 100 exceed the candidates
    want, n = ref_evaluate(scores, train, target, ks_recall, ks_ndcg)
    calls = []

    def score_fn(users):
        calls.append(users.copy())
        return torch.from_numpy(scores[users])

    res = evaluate_scores(
        score_fn,
        sp.csr_matrix(train),
        sp.csr_matrix(target),
        ks_recall=ks_recall,
        ks_ndcg=ks_ndcg,
        batch_size=8,
        top_n=12,
    )
    assert res.metrics["users"] == n
    for m, v in want.items():
        assert res.metrics[m] == pytest.approx(v), m
    assert max(len(c) for c in calls) <= 8
    users_with = np.flatnonzero(target.sum(1) > 0)
    assert res.per_user["uid"].tolist() == users_with.tolist()
    assert res.per_user["n_targets"].tolist() == target.sum(1)[users_with].astype(int).tolist()
    for m, v in want.items():
        assert res.per_user[m].mean() == pytest.approx(v)
    # Top-N lists follow the oracle order, never contain train items, ranks are 1-based.
    top = res.top_k
    assert list(top.columns) == ["uid", "rank", "iid", "score"]
    for u, grp in top.groupby("uid"):
        assert grp["rank"].tolist() == list(range(1, len(grp) + 1))
        expected = [i for i in ref_rank(scores[u], train[u].astype(bool), 12) if i >= 0]
        assert grp["iid"].tolist() == expected
        assert grp["score"].tolist() == scores[u, expected].tolist()


def test_evaluator_sparse_exclusion_ties_and_scores_untouched():
    """The evaluator excludes train items from the CSR (duplicate entries count once), on
    tie-heavy scores, and never writes into the tensor the score function returned."""
    rng = np.random.default_rng(11)
    n_users, n_items = 40, 30
    train, target, _ = _random_split(11, n_users, n_items)
    scores = np.tile(rng.integers(0, 3, size=n_items).astype(np.float32), (n_users, 1))  # popularity-like
    rows, cols = np.nonzero(train)
    dup = sp.csr_matrix(
        (np.ones(2 * rows.size, np.float32), (np.r_[rows, rows], np.r_[cols, cols])), shape=train.shape
    )  # every train entry stored twice
    want, n = ref_evaluate(scores, train, target, (1, 5, 20), (7, 100))
    held = torch.from_numpy(scores[0].copy())
    res = evaluate_scores(
        lambda u: held.unsqueeze(0).expand(u.size, -1),  # a view: writes would alias
        dup,
        sp.csr_matrix(target),
        ks_recall=(1, 5, 20),
        ks_ndcg=(7, 100),
        batch_size=7,
        top_n=9,
    )
    assert torch.equal(held, torch.from_numpy(scores[0]))
    assert res.metrics["users"] == n
    for m, v in want.items():
        assert res.metrics[m] == pytest.approx(v), m
    for u, grp in res.top_k.groupby("uid"):
        assert grp["iid"].tolist() == [i for i in ref_rank(scores[u], train[u].astype(bool), 9) if i >= 0]


def test_evaluator_val_items_rankable_at_test_and_numpy_scores():
    # One user; train item 0 excluded; val item 1 stays rankable and outranks the test item 2.
    train = sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 0]], dtype=np.float32))
    ev = RankingEvaluator(train, test, ks_recall=(1, 2), ks_ndcg=(2,))
    res = ev.evaluate(lambda users: np.array([[9.0, 5.0, 4.0, 3.0]]), top_n=3)
    assert res.metrics["Recall@1"] == 0.0
    assert res.metrics["Recall@2"] == 1.0
    assert res.metrics["NDCG@2"] == pytest.approx(1 / math.log2(3))
    assert res.top_k["iid"].tolist() == [1, 2, 3]


def test_evaluator_user_subset_and_shape_check():
    train, target, scores = _random_split(7)
    ev = RankingEvaluator(sp.csr_matrix(train), sp.csr_matrix(target), users=np.array([0, 1, 10, 11]))
    assert ev.users.tolist() == [10, 11]  # 0 and 1 have no targets
    with pytest.raises(ValueError, match="shape"):
        ev.evaluate(lambda users: torch.zeros((len(users), 3)))


def test_selection_score():
    assert selection_score({"Recall@20": 0.1, "Recall@40": 0.2, "NDCG@100": 0.3, "users": 5}) == pytest.approx(0.6)
