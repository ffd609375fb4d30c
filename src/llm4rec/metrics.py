"""Top-K ranking metrics (SPEC section 7), computed batch by batch on sparse targets.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

__all__ = [
    "DEFAULT_KS_NDCG",
    "DEFAULT_KS_RECALL",
    "EvalResult",
    "RankingEvaluator",
    "evaluate_scores",
    "ndcg_at_k",
    "recall_at_k",
    "selection_score",
    "split_matrices",
    "top_k",
]

DEFAULT_KS_RECALL: tuple[int, ...] = (20, 40)
DEFAULT_KS_NDCG: tuple[int, ...] = (100,)

ScoreFn = Callable[[np.ndarray], torch.Tensor | np.ndarray]
Targets = sp.spmatrix | sp.sparray | Sequence[np.ndarray]


def top_k(
    scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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

    Fast path: ``torch.topk``, then the k' selected items are re-sorted by (-score, id).
    Rows whose k'-th score also occurs outside the selection (a tie crossing the boundary,
    where topk's choice is arbitrary) take their top k' from a stable full sort instead.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [users, items], got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not torch.is_floating_point(scores):
        scores = scores.float()
    elif scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n_rows, n_items = scores.shape
    kk = min(k, n_items)
    if n_rows == 0 or n_items == 0:
        empty = torch.empty((n_rows, kk), dtype=torch.long, device=scores.device)
        return empty, torch.empty((n_rows, kk), dtype=scores.dtype, device=scores.device)

    # Working copy: model -inf -> lowest finite value (still a candidate), excluded -> -inf;
    # adding 0.0 turns -0.0 into 0.0 so that no sort can tell the two zeros apart.
    lowest = torch.finfo(scores.dtype).min
    work = torch.where(torch.isneginf(scores), torch.full_like(scores, lowest), scores) + 0.0
    if exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude shape {tuple(exclude.shape)} != scores shape {tuple(scores.shape)}")
        work = work.masked_fill(exclude.to(torch.bool), float("-inf"))
        n_candidates = n_items - exclude.to(torch.bool).sum(dim=1)
    else:
        n_candidates = torch.full((n_rows,), n_items, dtype=torch.long, device=scores.device)

    vals, idx = torch.topk(work, kk, dim=1, largest=True, sorted=False)
    # Re-sort the selection by (-score, id): order by id first, then a stable sort on -score.
    by_id = torch.argsort(idx, dim=1)
    idx = idx.gather(1, by_id)
    vals = vals.gather(1, by_id)
    order = torch.sort(-vals, dim=1, stable=True).indices
    idx = idx.gather(1, order)
    vals = vals.gather(1, order)

    # Boundary ties: the k'-th value occurs more often in the row than in the selection.
    kth = vals[:, -1:]
    in_row = (work == kth).sum(dim=1)
    in_sel = (vals == kth).sum(dim=1)
    redo = (in_row > in_sel) & ~torch.isneginf(kth[:, 0])
    if bool(redo.any()):
        rows = torch.nonzero(redo, as_tuple=True)[0]
        full = torch.sort(-work[rows], dim=1, stable=True).indices[:, :kk]
        idx[rows] = full
        vals[rows] = work[rows].gather(1, full)

    pos = torch.arange(kk, device=scores.device).unsqueeze(0)
    padded = pos >= n_candidates.unsqueeze(1)
    items = idx.masked_fill(padded, -1)
    values = scores.gather(1, idx).masked_fill(padded, float("-inf"))
    return items, values


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
    """Model-selection score of SPEC section 6: Recall@20 + Recall@40 + NDCG@100."""
    return float(metrics["Recall@20"] + metrics["Recall@40"] + metrics["NDCG@100"])


def split_matrices(
    interactions: pd.DataFrame, n_users: int, n_items: int
) -> dict[str, sp.csr_matrix]:
    """Binary float32 CSR users x items matrices for the train, val and test splits.

    ``interactions`` holds int columns ``uid``, ``iid`` and ``split`` in {train, val, test};
    every split key is present in the result even when it has no rows.
    """
    missing = {"uid", "iid", "split"} - set(interactions.columns)
    if missing:
        raise ValueError(f"interactions lack columns {sorted(missing)}")
    uid = interactions["uid"].to_numpy(dtype=np.int64)
    iid = interactions["iid"].to_numpy(dtype=np.int64)
    split = interactions["split"].astype(str).to_numpy()
    unknown = set(np.unique(split)) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"unknown split values {sorted(unknown)}")
    if uid.size and (uid.min() < 0 or uid.max() >= n_users):
        raise ValueError(f"uid outside [0, {n_users})")
    if iid.size and (iid.min() < 0 or iid.max() >= n_items):
        raise ValueError(f"iid outside [0, {n_items})")
    out: dict[str, sp.csr_matrix] = {}
    for name in ("train", "val", "test"):
        sel = split == name
        mat = sp.csr_matrix(
            (np.ones(int(sel.sum()), dtype=np.float32), (uid[sel], iid[sel])),
            shape=(n_users, n_items),
        )
        mat.sum_duplicates()
        mat.data[:] = 1.0
        out[name] = mat
    return out


def _rows_mask(csr: sp.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    """Dense bool [len(rows), I] of the nonzeros of the given CSR rows (one batch only)."""
    sub = csr[rows]
    mask = torch.zeros(sub.shape, dtype=torch.bool)
    r = np.repeat(np.arange(sub.shape[0]), np.diff(sub.indptr))
    mask[torch.from_numpy(r), torch.from_numpy(sub.indices.astype(np.int64))] = True
    return mask


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
    array of scores; train items are masked here, so models need not do it.
    """

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
        for start in range(0, self.users.size, self.batch_size):
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
            exclude = _rows_mask(self.train, batch).to(scores.device)
            items, values = top_k(scores, k_max, exclude)
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
            top = pd.concat(lists, ignore_index=True) if lists else _top_frame(
                np.empty(0, np.int64), np.empty((0, 0), np.int64), np.empty((0, 0))
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


def evaluate_scores(
    score_fn: ScoreFn,
    train_csr: sp.spmatrix,
    target_csr: sp.spmatrix,
    users: np.ndarray | None = None,
    ks_recall: Sequence[int] = DEFAULT_KS_RECALL,
    ks_ndcg: Sequence[int] = DEFAULT_KS_NDCG,
    batch_size: int = 1024,
    top_n: int = 0,
) -> EvalResult:
    """One-shot form of :class:`RankingEvaluator` (train items excluded, users without targets skipped)."""
    evaluator = RankingEvaluator(train_csr, target_csr, ks_recall, ks_ndcg, batch_size, users)
    return evaluator.evaluate(score_fn, top_n=top_n)
