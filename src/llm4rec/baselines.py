"""Baselines fitted on the train split only (SPEC section 7): popularity, ItemKNN, EASE, Multi-VAE.

Every model exposes ``score(users) -> torch.Tensor [B, I]`` for
:class:`llm4rec.metrics.RankingEvaluator`, which masks train items and breaks ties by item
id; the models therefore return raw scores for all items.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
from torch import nn

from llm4rec.metrics import (
    DEFAULT_KS_NDCG,
    DEFAULT_KS_RECALL,
    RankingEvaluator,
    selection_score,
)

__all__ = [
    "EASE",
    "EASE_LAMBDAS",
    "EASEMemoryError",
    "ItemKNN",
    "MultiVAE",
    "MultiVAEResult",
    "Popularity",
    "ease_memory_bytes",
    "fit_ease_grid",
    "train_multivae",
]

EASE_LAMBDAS: tuple[float, ...] = (1.0, 10.0, 100.0, 500.0, 1000.0, 3000.0)


def _binary_csr(x: sp.spmatrix) -> sp.csr_matrix:
    """Train matrix as binary float32 CSR (duplicates and explicit zeros removed)."""
    csr = sp.csr_matrix(x, dtype=np.float32, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.data[:] = 1.0
    return csr


def _users(users: np.ndarray | Sequence[int]) -> np.ndarray:
    return np.asarray(users, dtype=np.int64)


class Popularity:
    """Scores every item by its train interaction count (same list for every user)."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train_csr: sp.spmatrix) -> Popularity:
        self.counts = np.asarray(_binary_csr(train_csr).sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.counts is None:
            raise RuntimeError("Popularity.fit must be called first")
        row = torch.from_numpy(self.counts)
        return row.unsqueeze(0).expand(len(users), -1).clone()


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
        x = _binary_csr(train_csr)
        counts = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        x64 = sp.csc_matrix(x, dtype=np.float64)
        xt = x64.T.tocsr()
        n_items = x.shape[1]
        blocks = []
        for start in range(0, n_items, self.block_size):
            stop = min(start + self.block_size, n_items)
            co = sp.coo_matrix(xt @ x64[:, start:stop])  # co-occurrence counts, exact
            rows, cols = co.row.astype(np.int64), co.col.astype(np.int64)
            keep = rows != cols + start  # drop self-similarity
            rows, cols = rows[keep], cols[keep]
            vals = co.data[keep] / np.sqrt(counts[rows] * counts[cols + start])
            if self.k_neighbors is not None:
                rows, cols, vals = _prune_columns(rows, cols, vals, self.k_neighbors)
            blocks.append(
                sp.csc_matrix((vals.astype(np.float32), (rows, cols)), shape=(n_items, stop - start))
            )
        sim = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((n_items, n_items), dtype=np.float32)
        self.similarity = sim
        self.train = x
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.similarity is None or self.train is None:
            raise RuntimeError("ItemKNN.fit must be called first")
        out = (self.train[_users(users)] @ self.similarity).toarray()
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


class EASEMemoryError(MemoryError):
    """EASE's dense item x item matrices would exceed the configured memory limit."""


def ease_memory_bytes(n_items: int) -> int:
    """Peak estimate for EASE: Gram matrix and its inverse in float64, two float32 B
    (the grid keeps the best model while fitting the next)."""
    return int(n_items) ** 2 * (8 + 8 + 4 + 4)


def _check_ease_memory(n_items: int, max_memory_gb: float) -> None:
    need = ease_memory_bytes(n_items)
    if need > max_memory_gb * 1e9:
        raise EASEMemoryError(
            f"EASE needs dense item x item matrices: {n_items} items -> about {need / 1e9:.1f} GB "
            f"(limit max_memory_gb={max_memory_gb:g}). Raise the limit on a larger machine, or "
            "use ItemKNN / Multi-VAE for this dataset."
        )


class EASE:
    """EASE (Steck 2019): B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, score = X_u B.

    The closed form needs dense item x item matrices; :meth:`fit` checks the estimate of
    :func:`ease_memory_bytes` against ``max_memory_gb`` before allocating anything and
    raises :class:`EASEMemoryError` instead of running out of memory.
    """

    def __init__(self, l2: float = 500.0, max_memory_gb: float = 8.0) -> None:
        if l2 <= 0:
            raise ValueError("l2 must be > 0")
        self.l2 = float(l2)
        self.max_memory_gb = float(max_memory_gb)
        self.train: sp.csr_matrix | None = None
        self.weights: np.ndarray | None = None

    def fit(self, train_csr: sp.spmatrix, gram: np.ndarray | None = None) -> EASE:
        """Fit on train; ``gram`` (X^T X, float64) may be passed to reuse it across lambdas."""
        x = _binary_csr(train_csr)
        _check_ease_memory(x.shape[1], self.max_memory_gb)
        if gram is None:
            gram = _gram(x)
        p = gram.copy()
        p[np.diag_indices_from(p)] += self.l2
        p = scipy.linalg.inv(p, overwrite_a=True, check_finite=False)
        p /= -np.diag(p)[None, :]
        np.fill_diagonal(p, 0.0)
        self.weights = p.astype(np.float32)
        self.train = x
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.weights is None or self.train is None:
            raise RuntimeError("EASE.fit must be called first")
        out = self.train[_users(users)] @ self.weights
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _gram(x: sp.csr_matrix) -> np.ndarray:
    return (x.T.astype(np.float64) @ x.astype(np.float64)).toarray()


def fit_ease_grid(
    train_csr: sp.spmatrix,
    val_csr: sp.spmatrix,
    lambdas: Sequence[float] = EASE_LAMBDAS,
    max_memory_gb: float = 8.0,
    batch_size: int = 1024,
) -> tuple[EASE, list[dict[str, float]]]:
    """Choose EASE's L2 weight on validation by Recall@20 + Recall@40 + NDCG@100.

    Returns the best model (fitted on train only) and one row per lambda: lambda, the
    validation metrics and the selection score; ties keep the earlier lambda.
    """
    if not lambdas:
        raise ValueError("lambdas must not be empty")
    x = _binary_csr(train_csr)
    _check_ease_memory(x.shape[1], max_memory_gb)
    gram = _gram(x)
    evaluator = RankingEvaluator(x, val_csr, batch_size=batch_size)
    best: EASE | None = None
    best_score = -math.inf
    history: list[dict[str, float]] = []
    for lam in lambdas:
        model = EASE(l2=lam, max_memory_gb=max_memory_gb).fit(x, gram=gram)
        metrics = evaluator.evaluate(model.score).metrics
        score = selection_score(metrics)
        history.append({"lambda": float(lam), **metrics, "selection": score})
        if best is None or score > best_score:
            best, best_score = model, score
    return best, history


class MultiVAE(nn.Module):
    """Multi-VAE (Liang et al. 2018): I-600-200 encoder (mean, log-variance), 200-600-I decoder, tanh.

    Input rows are L2-normalized and dropped out (training only); the decoder's logits
    feed a multinomial log-likelihood. Dropout and the reparameterization noise draw from
    an explicit generator so that a seed fixes a whole run without touching global RNG.
    """

    def __init__(
        self, n_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n_items, self.latent, self.dropout = int(n_items), int(latent), float(dropout)
        # nn.Linear's default init draws from the global RNG; fork it so that only
        # ``generator`` decides the weights and callers' random streams stay untouched.
        with torch.random.fork_rng(devices=[]):
            self.enc = nn.Linear(n_items, hidden)
            self.enc_out = nn.Linear(hidden, 2 * latent)
            self.dec = nn.Linear(latent, hidden)
            self.dec_out = nn.Linear(hidden, n_items)
        for layer in (self.enc, self.enc_out, self.dec, self.dec_out):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.normal_(layer.bias, std=0.001, generator=generator)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, mean and log-variance; noise and dropout only in training mode."""
        h = nn.functional.normalize(x, dim=1)
        if self.training and self.dropout > 0:
            keep = 1.0 - self.dropout
            mask = torch.rand(h.shape, generator=generator, device=h.device) < keep
            h = h * mask / keep
        h = torch.tanh(self.enc(h))
        mu, logvar = self.enc_out(h).chunk(2, dim=1)
        z = mu
        if self.training:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
        logits = self.dec_out(torch.tanh(self.dec(z)))
        return logits, mu, logvar


def multivae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> torch.Tensor:
    """Negative multinomial log-likelihood plus beta * KL, both averaged over the batch."""
    nll = -(torch.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return nll + beta * kl


@dataclass
class MultiVAEResult:
    """The model with its best weights loaded, its score function and per-epoch history."""

    model: MultiVAE
    train: sp.csr_matrix
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf

    def score(self, users: np.ndarray) -> torch.Tensor:
        """Decoder logits from the mean code of each user's train items (no dropout)."""
        self.model.eval()
        x = torch.from_numpy(self.train[_users(users)].toarray())
        with torch.no_grad():
            logits, _, _ = self.model(x)
        return logits


def train_multivae(
    train_csr: sp.spmatrix,
    val_csr: sp.spmatrix,
    seed: int = 0,
    epochs: int = 200,
    patience: int = 20,
    batch_size: int = 500,
    lr: float = 1e-3,
    hidden: int = 600,
    latent: int = 200,
    dropout: float = 0.5,
    anneal_cap: float = 0.2,
    total_anneal_steps: int = 200_000,
    ks_recall: Sequence[int] = DEFAULT_KS_RECALL,
    ks_ndcg: Sequence[int] = DEFAULT_KS_NDCG,
    eval_batch_size: int = 1024,
) -> MultiVAEResult:
    """Train Multi-VAE on train rows, keep the epoch with the best validation selection score.

    KL weight beta = min(anneal_cap, step / total_anneal_steps), one step per batch, as in
    the paper's code. Users shuffled per epoch; stops after ``patience`` epochs without a
    gain. History rows: epoch, loss (mean over batches), beta, validation metrics, selection.
    ``ks_recall``/``ks_ndcg`` must include 20, 40 and 100 (the selection score uses them).
    """
    if patience < 1 or epochs < 1:
        raise ValueError("epochs and patience must be >= 1")
    x = _binary_csr(train_csr)
    gen = torch.Generator().manual_seed(int(seed))
    model = MultiVAE(x.shape[1], hidden, latent, dropout, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    evaluator = RankingEvaluator(x, val_csr, ks_recall, ks_ndcg, eval_batch_size)
    result = MultiVAEResult(model=model, train=x)
    train_users = np.flatnonzero(np.diff(x.indptr) > 0)
    best_state = copy.deepcopy(model.state_dict())
    step, stale = 0, 0
    for epoch in range(epochs):
        model.train()
        perm = train_users[torch.randperm(train_users.size, generator=gen).numpy()]
        losses = []
        beta = 0.0
        for start in range(0, perm.size, batch_size):
            batch = torch.from_numpy(x[perm[start : start + batch_size]].toarray())
            beta = min(anneal_cap, step / total_anneal_steps) if total_anneal_steps > 0 else anneal_cap
            logits, mu, logvar = model(batch, generator=gen)
            loss = multivae_loss(logits, batch, mu, logvar, beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        metrics = evaluator.evaluate(result.score).metrics
        score = selection_score(metrics)
        result.history.append(
            {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
             "beta": beta, **metrics, "selection": score}
        )
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return result
