"""Baselines fitted on the train split only (docs/method.md 7.5): popularity, ItemKNN, EASE, Multi-VAE.

Every model exposes ``score(users) -> torch.Tensor [B, I]`` for
:class:`llm4rec.metrics.RankingEvaluator`, which masks train items and breaks ties by item
id; the models therefore return raw scores for all items.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from llm4rec.memory import AUTO, ease_limit_gb, ease_memory_bytes
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
    "SparseRows",
    "ease_memory_bytes",
    "fit_ease_grid",
    "multivae_loss",
    "sparse_rows",
    "train_multivae",
]

log = logging.getLogger(__name__)

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


def _check_ease_memory(n_items: int, max_memory_gb: float | str) -> None:
    need = ease_memory_bytes(n_items)
    limit, why = ease_limit_gb(max_memory_gb)
    if need > limit * 1e9:
        raise EASEMemoryError(
            f"EASE needs dense item x item matrices: {n_items} items -> about {need / 1e9:.1f} GB "
            f"(limit {limit:.1f} GB, {why}). Run it on a larger machine (or give the job more memory), "
            "or use ItemKNN / Multi-VAE for this dataset."
        )


class EASE:
    """EASE (Steck 2019): B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, score = X_u B.

    The closed form needs dense item x item matrices; :meth:`fit` checks the estimate of
    :func:`ease_memory_bytes` against ``max_memory_gb`` (a number of GB, or ``auto``: a share
    of the memory this job can use, `llm4rec.memory`) before allocating anything and raises
    :class:`EASEMemoryError` instead of running out of memory.
    """

    def __init__(self, l2: float = 500.0, max_memory_gb: float | str = AUTO) -> None:
        if l2 <= 0:
            raise ValueError("l2 must be > 0")
        self.l2 = float(l2)
        self.max_memory_gb = max_memory_gb
        self.train: sp.csr_matrix | None = None
        self.weights: np.ndarray | None = None

    def fit(self, train_csr: sp.spmatrix, gram: np.ndarray | None = None) -> EASE:
        """Fit on train; ``gram`` (X^T X, float64) may be passed to reuse it across lambdas."""
        x = _binary_csr(train_csr)
        _check_ease_memory(x.shape[1], self.max_memory_gb)
        if gram is None:
            gram = _gram(x)
        self.weights = _ease_weights(gram, self.l2)
        self.train = x
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.weights is None or self.train is None:
            raise RuntimeError("EASE.fit must be called first")
        out = self.train[_users(users)] @ self.weights
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _gram(x: sp.csr_matrix) -> np.ndarray:
    return (x.T.astype(np.float64) @ x.astype(np.float64)).toarray()


def _ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's B = I - P diag(1/diag(P)), P = (gram + l2 I)^-1 in float64, returned as float32.

    P is a Cholesky inverse (potrf + potri, n^3 flops; an LU inverse is 2 n^3), computed in
    place in one n x n float64 buffer by torch's LAPACK (MKL on x86: about 25% less CPU
    than scipy's OpenBLAS here, the torch thread setting, and it releases the GIL so that
    progress lines keep coming during the minutes it takes). LU is the fallback should the
    factorization fail. One eigendecomposition shared by all lambdas costs more than six
    Cholesky inverses at this size (BENCHMARKS.md, issue 11).
    """
    p = torch.from_numpy(np.array(gram, dtype=np.float64, order="C", copy=True))
    p.diagonal().add_(l2)
    # LAPACK works in column-major order; the symmetric matrix's transposed view is that
    # layout over the same memory, so torch makes no n x n copy of its own.
    f = p.t()
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(f, out=(f, info))
    if int(info) == 0:
        torch.cholesky_inverse(f, out=f)  # the full symmetric inverse, in place
    else:
        p = torch.from_numpy(np.array(gram, dtype=np.float64, order="C", copy=True))
        p.diagonal().add_(l2)
        p = torch.linalg.inv(p)
    p.div_(-p.diagonal().clone())  # column j divided by -P_jj
    w = p.to(torch.float32)
    del p
    w.fill_diagonal_(0.0)
    return w.numpy()


class _Heartbeat:
    """Logs ``message`` with the elapsed seconds every ``seconds`` while the block runs
    (from a thread, so it also speaks during one long LAPACK call that releases the GIL)."""

    def __init__(self, message: str, seconds: float = 60.0) -> None:
        self.message, self.seconds = message, float(seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(self.seconds):
            log.info("%s: %.0f s so far", self.message, time.perf_counter() - t0)

    def __enter__(self) -> _Heartbeat:
        if self.seconds > 0:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def fit_ease_grid(
    train_csr: sp.spmatrix,
    val_csr: sp.spmatrix,
    lambdas: Sequence[float] = EASE_LAMBDAS,
    max_memory_gb: float | str = AUTO,
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
    t0 = time.perf_counter()
    gram = _gram(x)
    log.info(
        "EASE: Gram matrix of %d items in %.1f s; %d lambdas to try", x.shape[1], time.perf_counter() - t0, len(lambdas)
    )
    evaluator = RankingEvaluator(x, val_csr, batch_size=batch_size)
    best: EASE | None = None
    best_score = -math.inf
    history: list[dict[str, float]] = []
    for n, lam in enumerate(lambdas, 1):
        t0 = time.perf_counter()
        with _Heartbeat(f"EASE lambda {lam:g} ({n}/{len(lambdas)}): Cholesky inverse of {x.shape[1]} x {x.shape[1]}"):
            model = EASE(l2=lam, max_memory_gb=max_memory_gb).fit(x, gram=gram)
        t1 = time.perf_counter()
        metrics = evaluator.evaluate(model.score).metrics
        score = selection_score(metrics)
        history.append({"lambda": float(lam), **metrics, "selection": score})
        log.info(
            "EASE lambda %g (%d/%d): fit %.1f s, validation %.1f s: %s, selection %.4f",
            lam,
            n,
            len(lambdas),
            t1 - t0,
            time.perf_counter() - t1,
            _fmt(metrics),
            score,
        )
        if best is None or score > best_score:
            best, best_score = model, score
        else:
            del model  # free its weights before the next fit
    return best, history


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "users")


class MultiVAE(nn.Module):
    """Multi-VAE (Liang et al. 2018): I-600-200 encoder (mean, log-variance), 200-600-I decoder, tanh.

    Input rows are L2-normalized and dropped out (training only); the decoder's logits
    feed a multinomial log-likelihood. Dropout and the reparameterization noise draw from
    an explicit generator so that a seed fixes a whole run without touching global RNG.

    The input ``x`` is a dense [B, I] tensor or a :class:`SparseRows` batch; both
    compute the same function with the same random draws. The sparse form touches only the
    nonzeros in the input layer (a sum of gathered weight columns instead of a dense
    [B, I] x [I, 600] product), which is what makes a batch cheap on a catalog of thousands
    of items; the decoder's [B, 600] x [600, I] products are then most of an epoch.
    """

    def __init__(
        self,
        n_items: int,
        hidden: int = 600,
        latent: int = 200,
        dropout: float = 0.5,
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

    def _encode_input(self, x: torch.Tensor | SparseRows, generator: torch.Generator | None) -> torch.Tensor:
        """tanh(enc(dropout(normalize(x)))) for a dense or sparse CSR batch.

        Dropout draws one uniform per [B, I] entry, as the dense form always has, and the
        sparse form reads them at its nonzeros (a zero entry stays zero whatever its mask):
        the same random stream, so a seed gives the same run in either form. The draw is
        cheap next to the decoder's [B, 600] x [600, I] product.
        """
        keep = 1.0 - self.dropout
        drop = self.training and self.dropout > 0
        if not isinstance(x, SparseRows):
            h = nn.functional.normalize(x, dim=1)
            if drop:
                mask = torch.rand(h.shape, generator=generator, device=h.device) < keep
                h = h * mask / keep
            return torch.tanh(self.enc(h))
        col, val, row = x.col, x.val, x.row
        # F.normalize: x / max(||x||_2, 1e-12), per row.
        norm = torch.zeros(x.shape[0], dtype=val.dtype, device=val.device).index_add_(0, row, val * val)
        h = val / norm.sqrt().clamp_min(1e-12)[row]
        if drop:
            u = torch.rand(x.shape, generator=generator, device=val.device)[row, col]
            h = h * (u < keep) / keep
        # enc(h) on the nonzeros only: gather the weight columns of the batch's items and
        # sum them per row ([hidden, nnz] -> [hidden, B]); the weight keeps its layout.
        w = self.enc.weight.index_select(1, col) * h
        pre = torch.zeros(w.shape[0], x.shape[0], dtype=w.dtype, device=w.device).index_add_(1, row, w)
        return torch.tanh(pre.t() + self.enc.bias)

    def forward(
        self, x: torch.Tensor | SparseRows, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, mean and log-variance; noise and dropout only in training mode."""
        h = self._encode_input(x, generator)
        mu, logvar = self.enc_out(h).chunk(2, dim=1)
        z = mu
        if self.training:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
        logits = self.dec_out(torch.tanh(self.dec(z)))
        return logits, mu, logvar


@dataclass(frozen=True)
class SparseRows:
    """A batch of user rows in CSR form (torch tensors): row pointers ``crow`` [B+1], item
    ids ``col`` and values ``val`` [nnz], the row id of every entry ``row`` [nnz]."""

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    row: torch.Tensor
    shape: tuple[int, int]

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=self.val.dtype)
        out[self.row, self.col] = self.val
        return out


def sparse_rows(x: sp.csr_matrix, users: np.ndarray | Sequence[int]) -> SparseRows:
    """Rows ``users`` of a scipy CSR matrix as a float32 :class:`SparseRows` batch [B, I]."""
    sub = sp.csr_matrix(x[_users(users)])
    crow = torch.from_numpy(sub.indptr.astype(np.int64))
    return SparseRows(
        crow=crow,
        col=torch.from_numpy(sub.indices.astype(np.int64)),
        val=torch.from_numpy(sub.data.astype(np.float32)),
        row=torch.repeat_interleave(torch.arange(sub.shape[0]), crow.diff()),
        shape=(int(sub.shape[0]), int(sub.shape[1])),
    )


def multivae_loss(
    logits: torch.Tensor, x: torch.Tensor | SparseRows, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> torch.Tensor:
    """Negative multinomial log-likelihood plus beta * KL, both averaged over the batch.

    ``x`` dense or :class:`SparseRows` (the log-likelihood is then gathered at the nonzeros only).
    """
    log_p = torch.log_softmax(logits, dim=1)
    if isinstance(x, SparseRows):
        row, col, val = x.row, x.col, x.val
        per_row = torch.zeros(x.shape[0], dtype=log_p.dtype, device=log_p.device)
        nll = -per_row.index_add(0, row, log_p[row, col] * val).mean()
    else:
        nll = -(log_p * x).sum(dim=1).mean()
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
    epochs_run: int = 0

    def score(self, users: np.ndarray) -> torch.Tensor:
        """Decoder logits from the mean code of each user's train items (no dropout)."""
        self.model.eval()
        with torch.no_grad():
            logits, _, _ = self.model(sparse_rows(self.train, users))
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
    eval_every: int = 1,
    log_seconds: float = 60.0,
) -> MultiVAEResult:
    """Train Multi-VAE on train rows, keep the epoch with the best validation selection score.

    KL weight beta = min(anneal_cap, step / total_anneal_steps), one step per batch, as in
    the paper's code. Users shuffled per epoch; input batches are sparse (converted per
    batch). Validation every ``eval_every`` epochs and after the last one; stops once
    ``patience`` epochs have passed since the best validated epoch. History rows (one per
    validation): epoch, loss (mean over that epoch's batches), beta, validation metrics,
    selection. One log line per epoch, and one per ``log_seconds`` inside a long epoch.
    ``ks_recall``/``ks_ndcg`` must include 20, 40 and 100 (the selection score uses them).
    """
    if patience < 1 or epochs < 1 or eval_every < 1:
        raise ValueError("epochs, patience and eval_every must be >= 1")
    x = _binary_csr(train_csr)
    gen = torch.Generator().manual_seed(int(seed))
    model = MultiVAE(x.shape[1], hidden, latent, dropout, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # one pass per tensor, same update
    evaluator = RankingEvaluator(x, val_csr, ks_recall, ks_ndcg, eval_batch_size)
    result = MultiVAEResult(model=model, train=x)
    train_users = np.flatnonzero(np.diff(x.indptr) > 0)
    n_batches = -(-train_users.size // batch_size)
    log.info(
        "Multi-VAE: %d users, %d items, %d batches of %d per epoch, up to %d epochs, validation every %d",
        train_users.size,
        x.shape[1],
        n_batches,
        batch_size,
        epochs,
        eval_every,
    )
    best_state = copy.deepcopy(model.state_dict())
    step = 0
    t_start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        t0 = last_line = time.perf_counter()
        perm = train_users[torch.randperm(train_users.size, generator=gen).numpy()]
        losses = []
        beta = 0.0
        for b, start in enumerate(range(0, perm.size, batch_size), 1):
            batch = sparse_rows(x, perm[start : start + batch_size])
            beta = min(anneal_cap, step / total_anneal_steps) if total_anneal_steps > 0 else anneal_cap
            logits, mu, logvar = model(batch, generator=gen)
            loss = multivae_loss(logits, batch, mu, logvar, beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if time.perf_counter() - last_line >= log_seconds and b < n_batches:
                last_line = time.perf_counter()
                log.info(
                    "Multi-VAE epoch %d: batch %d/%d, loss %.3f, %.0f s",
                    epoch,
                    b,
                    n_batches,
                    float(np.mean(losses)),
                    last_line - t0,
                )
        loss_mean = float(np.mean(losses)) if losses else float("nan")
        t_train = time.perf_counter() - t0
        if (epoch + 1) % eval_every and epoch != epochs - 1:
            log.info(
                "Multi-VAE epoch %d/%d: loss %.3f, beta %.3f, train %.1f s (total %.0f s)",
                epoch,
                epochs,
                loss_mean,
                beta,
                t_train,
                time.perf_counter() - t_start,
            )
            continue
        t1 = time.perf_counter()
        metrics = evaluator.evaluate(result.score).metrics
        score = selection_score(metrics)
        result.history.append({"epoch": epoch, "loss": loss_mean, "beta": beta, **metrics, "selection": score})
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        log.info(
            "Multi-VAE epoch %d/%d: loss %.3f, beta %.3f, train %.1f s, validation %.1f s: %s, "
            "selection %.4f (best %.4f, epoch %d; total %.0f s)",
            epoch,
            epochs,
            loss_mean,
            beta,
            t_train,
            time.perf_counter() - t1,
            _fmt(metrics),
            score,
            result.best_score,
            result.best_epoch,
            time.perf_counter() - t_start,
        )
        if epoch - result.best_epoch >= patience:
            break
    result.epochs_run = epoch + 1
    model.load_state_dict(best_state)
    model.eval()
    return result
