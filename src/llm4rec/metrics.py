"""Top-K ranking metrics (docs/method.md 7.2-7.3), computed batch by batch on sparse targets.

Conventions, shared by every model and baseline so that numbers are comparable:

- Only users with at least one target item count; train items are excluded from the
  ranking (validation items stay rankable at test time, as in the seed code).
- Ties are broken by a stable order on (-score, item id): among equal scores the lower
  item id ranks first.
- Recall@K = hits in the top K / min(K, |targets|).
- NDCG@K = DCG@K / IDCG, gain 1 / log2(rank + 1) with 1-based ranks, where the ideal DCG
  places min(K, |targets|) hits at the top.
- K larger than the number of candidates: every candidate is ranked (the denominators
  still use K).

Nothing here builds a dense users x items matrix for the whole dataset: scores, exclusion
masks and targets are materialized one user batch at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

log = logging.getLogger(__name__)

from llm4rec.core.constants import DEFAULT_KS_NDCG, DEFAULT_KS_RECALL  # noqa: E402

ScoreFn = Callable[[np.ndarray], torch.Tensor | np.ndarray]
Targets = sp.spmatrix | sp.sparray | Sequence[np.ndarray]


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items per row, ordered by (-score, item id), excluded items never returned.

    Args:
        scores: float tensor [B, I]; NaN is rejected (a silent NaN would corrupt the order).
        k: number of items wanted (>= 1); k' = min(k, I) columns are returned.
        exclude: optional bool tensor [B, I]; True marks an item that must not be ranked
            (the user's train items).

    Returns:
        items: int64 [B, k'] item ids; a row with fewer than k' candidates is padded at the
            end with -1.
        values: [B, k'] the scores of those items (-inf at padded positions). A candidate
            the model scored -inf still ranks (after all finite scores), keeping its score.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [users, items], got shape {tuple(scores.shape)}")
    if exclude is None:
        return _top_k(scores, k, None, None, None)
    if exclude.shape != scores.shape:
        raise ValueError(f"exclude shape {tuple(exclude.shape)} != scores shape {tuple(scores.shape)}")
    rows, cols = torch.nonzero(exclude.to(torch.bool), as_tuple=True)
    n_excluded = torch.bincount(rows, minlength=scores.shape[0])
    return _top_k(scores, k, rows, cols, n_excluded)


def _top_k(
    scores: torch.Tensor,
    k: int,
    ex_rows: torch.Tensor | None,
    ex_cols: torch.Tensor | None,
    n_excluded: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k` with the excluded items given as distinct (row, item) index pairs and
    their count per row, so that the evaluator never builds a dense [B, I] mask.

    Cost: one min/max pass (NaN and -inf check), one copy, the exclusion scatter and one
    ``torch.topk`` of k'+1 per row; everything else works on [B, k'+1]. The (k'+1)-th value
    tells whether a tie crosses the k' boundary (where topk's choice among equal scores is
    arbitrary); only those rows are redone, taking the tied items in id order.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not torch.is_floating_point(scores) or scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    n_rows, n_items = scores.shape
    kk = min(k, n_items)
    if n_rows == 0 or n_items == 0:
        empty = torch.empty((n_rows, kk), dtype=torch.long, device=scores.device)
        return empty, torch.empty((n_rows, kk), dtype=scores.dtype, device=scores.device)
    lo, hi = torch.aminmax(scores)  # NaN propagates into both
    if bool(torch.isnan(lo) | torch.isnan(hi)):
        raise ValueError("scores contain NaN")

    # Working copy: model -inf -> lowest finite value (still a candidate), excluded -> -inf.
    if bool(torch.isneginf(lo)):
        lowest = torch.finfo(scores.dtype).min
        work = torch.where(torch.isneginf(scores), torch.full_like(scores, lowest), scores)
    else:
        work = scores.clone()
    if ex_rows is not None and ex_rows.numel():
        work[ex_rows, ex_cols] = float("-inf")
    if n_excluded is None:
        n_candidates = torch.full((n_rows,), n_items, dtype=torch.long, device=scores.device)
    else:
        n_candidates = n_items - n_excluded.to(device=scores.device, dtype=torch.long)

    m = min(kk + 1, n_items)
    vals, idx = torch.topk(work, m, dim=1, largest=True, sorted=False)
    vals = vals + 0.0  # -0.0 -> 0.0: no sort below can tell the two zeros apart
    # Order the selection by (-score, id): by id first, then a stable sort on -score.
    by_id = torch.argsort(idx, dim=1)
    idx, vals = idx.gather(1, by_id), vals.gather(1, by_id)
    order = torch.sort(-vals, dim=1, stable=True).indices
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    if m > kk:
        kth = vals[:, kk - 1]
        redo = (vals[:, kk] == kth) & ~torch.isneginf(kth)
        idx = idx[:, :kk]
        if bool(redo.any()):
            _fill_boundary_ties(work, idx, vals[:, :kk], torch.nonzero(redo, as_tuple=True)[0], kth)

    pos = torch.arange(kk, device=scores.device).unsqueeze(0)
    padded = pos >= n_candidates.unsqueeze(1)
    items = idx.masked_fill(padded, -1)
    values = scores.gather(1, idx).masked_fill(padded, float("-inf"))
    return items, values


def _fill_boundary_ties(
    work: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor, kth: torch.Tensor
) -> None:
    """In ``rows`` of ``idx`` [B, k'] (sorted by (-score, id)), put the lowest-id items tied
    at the k'-th score after the items scored above it (those are all in the selection)."""
    kk = idx.shape[1]
    t = kth[rows]
    above = (vals[rows] > t[:, None]).sum(dim=1)
    r, c = torch.nonzero(work[rows] == t[:, None], as_tuple=True)  # row-major: ids ascending
    counts = torch.bincount(r, minlength=rows.numel())
    rank = torch.arange(r.numel(), device=r.device) - (torch.cumsum(counts, 0) - counts)[r]
    keep = rank < (kk - above)[r]
    r, c, rank = r[keep], c[keep], rank[keep]
    sub = idx[rows]
    sub[r, above[r] + rank] = c
    idx[rows] = sub


def _as_numpy_items(ranked: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(ranked, torch.Tensor):
        ranked = ranked.detach().cpu().numpy()
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked items must be 2-D [users, K], got shape {ranked.shape}")
    return ranked


def _target_keys(targets: Targets, n_rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sorted unique (row, item) keys of the targets, per-row target counts and the key stride."""
    if sp.issparse(targets):
        csr = sp.csr_matrix(targets)
        if csr.shape[0] != n_rows:
            raise ValueError(f"targets have {csr.shape[0]} rows, ranked has {n_rows}")
        csr.eliminate_zeros()
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(csr.indptr))
        cols = csr.indices.astype(np.int64)
        stride = max(int(csr.shape[1]), 1)
    else:
        if len(targets) != n_rows:
            raise ValueError(f"targets have {len(targets)} rows, ranked has {n_rows}")
        arrays = [np.asarray(t, dtype=np.int64).ravel() for t in targets]
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        cols = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
        if cols.size and cols.min() < 0:
            raise ValueError("target item ids must be >= 0")
        stride = int(cols.max()) + 1 if cols.size else 1
    keys = np.unique(rows * stride + cols)
    counts = np.bincount(keys // stride, minlength=n_rows).astype(np.int64)
    return keys, counts, stride


def _hits(ranked: np.ndarray, targets: Targets) -> tuple[np.ndarray, np.ndarray]:
    """Bool [B, K]: is ranked[b, j] a target of row b; plus the per-row target counts."""
    n_rows = ranked.shape[0]
    keys, counts, stride = _target_keys(targets, n_rows)
    valid = (ranked >= 0) & (ranked < stride)
    query = np.arange(n_rows, dtype=np.int64)[:, None] * stride + np.where(valid, ranked, 0)
    if keys.size == 0:
        return np.zeros(ranked.shape, dtype=bool), counts
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return valid & (keys[pos] == query), counts


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")


def recall_at_k(ranked: torch.Tensor | np.ndarray, targets: Targets, k: int) -> np.ndarray:
    """Per-user Recall@k = hits in the first k ranked items / min(k, |targets|).

    Args:
        ranked: [B, K'] distinct item ids per row in rank order (-1 = padding), e.g. from
            :func:`top_k`; only the first k columns are used.
        targets: the batch's target items, a sparse matrix [B, I] (nonzeros are targets) or
            a sequence of B int arrays.
        k: the cutoff.

    Returns:
        float64 [B]; NaN for users without targets (they do not count in means).
    """
    _check_k(k)
    ranked = _as_numpy_items(ranked)
    hits, counts = _hits(ranked[:, :k], targets)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = hits.sum(axis=1) / np.minimum(k, counts)
    return np.where(counts > 0, out, np.nan)


def ndcg_at_k(ranked: torch.Tensor | np.ndarray, targets: Targets, k: int) -> np.ndarray:
    """Per-user NDCG@k, binary gains 1/log2(rank+1), ideal DCG over min(k, |targets|) hits.

    Same arguments as :func:`recall_at_k`; NaN for users without targets.
    """
    _check_k(k)
    ranked = _as_numpy_items(ranked)
    hits, counts = _hits(ranked[:, :k], targets)
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = hits.astype(np.float64) @ discount[: hits.shape[1]]
    ideal_cum = np.concatenate([[0.0], np.cumsum(discount)])
    idcg = ideal_cum[np.minimum(k, counts)]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = dcg / idcg
    return np.where(counts > 0, out, np.nan)


def selection_score(metrics: dict[str, float]) -> float:
    """Model-selection score (docs/method.md 6.4): Recall@20 + Recall@40 + NDCG@100."""
    return float(metrics["Recall@20"] + metrics["Recall@40"] + metrics["NDCG@100"])


def _rows_pattern(csr: sp.csr_matrix) -> sp.csr_matrix:
    """The stored-entry pattern of ``csr`` as canonical bool CSR (sorted, no duplicates)."""
    pattern = sp.csr_matrix((np.ones(csr.nnz, dtype=bool), csr.indices, csr.indptr), shape=csr.shape)
    pattern.sum_duplicates()
    return pattern


def _rows_entries(
    pattern: sp.csr_matrix, rows: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch row, item) index pairs of the given rows of a canonical pattern, and their
    count per row: the exclusion of one batch without a dense [B, I] mask."""
    sub = pattern[rows]
    counts = np.diff(sub.indptr).astype(np.int64)
    r = np.repeat(np.arange(sub.shape[0], dtype=np.int64), counts)
    return (
        torch.from_numpy(r).to(device),
        torch.from_numpy(sub.indices.astype(np.int64)).to(device),
        torch.from_numpy(counts).to(device),
    )


@dataclass
class EvalResult:
    """Means over users with targets, per-user values and optional top-N lists.

    ``metrics``: {"Recall@20": ..., "Recall@40": ..., "NDCG@100": ..., "users": n}.
    ``per_user``: one row per evaluated user: uid, n_targets, one column per metric
    (input for paired tests between models).
    ``top_k``: None, or columns uid, rank (1-based), iid, score (recommendations.parquet).
    """

    metrics: dict[str, float]
    per_user: pd.DataFrame
    top_k: pd.DataFrame | None = None


class RankingEvaluator:
    """Evaluates a score function on fixed train (excluded) and target matrices.

    Built once per split and reused (grid search, every training epoch). The score
    function gets a sorted int64 array of user ids and returns a [B, I] float tensor or
    array of scores; train items are masked here, so models need not do it. A pass that
    runs longer than ``log_seconds`` logs its progress once per ``log_seconds``.
    """

    log_seconds: float = 60.0

    def __init__(
        self,
        train_csr: sp.spmatrix,
        target_csr: sp.spmatrix,
        ks_recall: Sequence[int] = DEFAULT_KS_RECALL,
        ks_ndcg: Sequence[int] = DEFAULT_KS_NDCG,
        batch_size: int = 1024,
        users: np.ndarray | None = None,
    ) -> None:
        self.train = sp.csr_matrix(train_csr)
        self.target = sp.csr_matrix(target_csr)
        self.train.eliminate_zeros()
        self.target.eliminate_zeros()
        if self.train.shape != self.target.shape:
            raise ValueError(f"train shape {self.train.shape} != target shape {self.target.shape}")
        for k in (*ks_recall, *ks_ndcg):
            _check_k(k)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.ks_recall = tuple(int(k) for k in ks_recall)
        self.ks_ndcg = tuple(int(k) for k in ks_ndcg)
        self.batch_size = int(batch_size)
        self.n_items = self.train.shape[1]
        has_target = np.flatnonzero(np.diff(self.target.indptr) > 0)
        if users is not None:
            has_target = np.intersect1d(np.asarray(users, dtype=np.int64), has_target)
        self.users = has_target.astype(np.int64)
        self._exclude = _rows_pattern(self.train)

    @property
    def metric_names(self) -> list[str]:
        return [f"Recall@{k}" for k in self.ks_recall] + [f"NDCG@{k}" for k in self.ks_ndcg]

    def evaluate(self, score_fn: ScoreFn, top_n: int = 0) -> EvalResult:
        """Rank every evaluated user's candidates with ``score_fn`` and compute the metrics.

        ``top_n`` > 0 also returns each user's top ``top_n`` recommendations.
        """
        k_max = max((*self.ks_recall, *self.ks_ndcg, top_n, 1))
        per_metric: dict[str, list[np.ndarray]] = {m: [] for m in self.metric_names}
        lists: list[pd.DataFrame] = []
        t0 = last_line = time.perf_counter()
        for start in range(0, self.users.size, self.batch_size):
            if time.perf_counter() - last_line >= self.log_seconds:
                last_line = time.perf_counter()
                log.info("evaluation: %d/%d users, %.0f s", start, self.users.size, last_line - t0)
            batch = self.users[start : start + self.batch_size]
            scores = score_fn(batch)
            if not isinstance(scores, torch.Tensor):
                scores = torch.as_tensor(np.asarray(scores))
            scores = scores.detach()
            if tuple(scores.shape) != (batch.size, self.n_items):
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)}, expected {(batch.size, self.n_items)}"
                )
            # Rank on the scores' device (GPU scores never cross as a [B, I] copy).
            items, values = _top_k(scores, k_max, *_rows_entries(self._exclude, batch, scores.device))
            items, values = items.cpu(), values.cpu()
            ranked = items.numpy()
            targets = self.target[batch]
            for k in self.ks_recall:
                per_metric[f"Recall@{k}"].append(recall_at_k(ranked, targets, k))
            for k in self.ks_ndcg:
                per_metric[f"NDCG@{k}"].append(ndcg_at_k(ranked, targets, k))
            if top_n > 0:
                lists.append(_top_frame(batch, ranked[:, :top_n], values[:, :top_n].numpy()))
        per_user = pd.DataFrame(
            {
                "uid": self.users,
                "n_targets": np.diff(self.target.indptr)[self.users].astype(np.int64),
            }
        )
        metrics: dict[str, float] = {}
        for name, parts in per_metric.items():
            col = np.concatenate(parts) if parts else np.empty(0)
            per_user[name] = col
            metrics[name] = float(col.mean()) if col.size else float("nan")
        metrics["users"] = int(self.users.size)
        top = None
        if top_n > 0:
            top = (
                pd.concat(lists, ignore_index=True)
                if lists
                else _top_frame(np.empty(0, np.int64), np.empty((0, 0), np.int64), np.empty((0, 0)))
            )
        return EvalResult(metrics=metrics, per_user=per_user, top_k=top)


def _top_frame(users: np.ndarray, items: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """Long table uid, rank, iid, score of the non-padded ranked items."""
    n, k = items.shape
    keep = items >= 0
    return pd.DataFrame(
        {
            "uid": np.repeat(users, k).reshape(n, k)[keep].astype(np.int64),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), n).reshape(n, k)[keep],
            "iid": items[keep].astype(np.int64),
            "score": values[keep].astype(np.float64),
        }
    )
