"""ItemKNN: cosine item-item similarity over train interactions, pruned to the top
neighbours per item (docs/method.md 7.5)."""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
import torch

from llm4rec.baselines.common import as_user_array, binary_train_matrix

log = logging.getLogger(__name__)


class ItemKNN:
    """Item-based nearest neighbours with cosine similarity on binary train interactions.

    ``sim[i, j] = |U_i & U_j| / sqrt(|U_i| |U_j|)`` (no shrinkage), self-similarity zero;
    ``score(u, j) = sum over u's train items i of sim[i, j]``. By default all neighbours are
    kept (``k_neighbors=None``). With ``k_neighbors = k`` each target column j keeps only its
    k most similar items i (ties: lower item id), the classic item-based kNN prediction from
    the k nearest neighbours of the candidate. The similarity is computed sparsely, in blocks
    of ``block_size`` columns that are pruned before the next block, so memory follows the
    kept neighbours, not item x item.
    """

    def __init__(self, k_neighbors: int | None = None, block_size: int = 2048) -> None:
        if k_neighbors is not None and k_neighbors < 1:
            raise ValueError("k_neighbors must be >= 1 or None")
        self.k_neighbors = k_neighbors
        self.block_size = int(block_size)
        self.train: sp.csr_matrix | None = None
        self.similarity: sp.csr_matrix | None = None

    def fit(self, train_csr: sp.spmatrix) -> ItemKNN:
        x = binary_train_matrix(train_csr)
        counts = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        x64 = sp.csc_matrix(x, dtype=np.float64)
        xt = x64.T.tocsr()
        n_items = x.shape[1]
        blocks = []
        t0 = last_line = time.perf_counter()
        for start in range(0, n_items, self.block_size):
            if time.perf_counter() - last_line >= 60.0:
                last_line = time.perf_counter()
                log.info("ItemKNN: similarity columns %d/%d, %.0f s", start, n_items, last_line - t0)
            stop = min(start + self.block_size, n_items)
            co = sp.coo_matrix(xt @ x64[:, start:stop])  # co-occurrence counts, exact
            rows, cols = co.row.astype(np.int64), co.col.astype(np.int64)
            keep = rows != cols + start  # drop self-similarity
            rows, cols = rows[keep], cols[keep]
            vals = co.data[keep] / np.sqrt(counts[rows] * counts[cols + start])
            if self.k_neighbors is not None:
                rows, cols, vals = _prune_columns(rows, cols, vals, self.k_neighbors)
            blocks.append(sp.csc_matrix((vals.astype(np.float32), (rows, cols)), shape=(n_items, stop - start)))
        sim = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((n_items, n_items), dtype=np.float32)
        self.similarity = sim
        self.train = x
        log.info("ItemKNN: similarity of %d items, %d nonzeros, in %.1f s", n_items, sim.nnz, time.perf_counter() - t0)
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.similarity is None or self.train is None:
            raise RuntimeError("ItemKNN.fit must be called first")
        out = (self.train[as_user_array(users)] @ self.similarity).toarray()
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _prune_columns(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the k largest entries of every column (ties: lower row id), vectorized."""
    order = np.lexsort((rows, -vals, cols))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(cols, cols, side="left")
    keep = (np.arange(cols.size) - starts) < k
    return rows[keep], cols[keep], vals[keep]
