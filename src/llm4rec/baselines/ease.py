"""EASE: the closed-form item-item model, its L2 weight chosen on validation, with a memory
check before the dense item x item matrices are built (docs/method.md 7.5)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from llm4rec.baselines.common import as_user_array, binary_train_matrix, metrics_line
from llm4rec.core.memory import AUTO, ease_limit_gb, ease_memory_bytes
from llm4rec.metrics import RankingEvaluator, selection_score

log = logging.getLogger(__name__)

EASE_LAMBDAS: tuple[float, ...] = (1.0, 10.0, 100.0, 500.0, 1000.0, 3000.0)


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
    of the memory this job can use, `llm4rec.core.memory`) before allocating anything and raises
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
        x = binary_train_matrix(train_csr)
        _check_ease_memory(x.shape[1], self.max_memory_gb)
        if gram is None:
            gram = _gram(x)
        self.weights = _ease_weights(gram, self.l2)
        self.train = x
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.weights is None or self.train is None:
            raise RuntimeError("EASE.fit must be called first")
        out = self.train[as_user_array(users)] @ self.weights
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
    Cholesky inverses at this size (BENCHMARKS.md).
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
    x = binary_train_matrix(train_csr)
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
            metrics_line(metrics),
            score,
        )
        if best is None or score > best_score:
            best, best_score = model, score
        else:
            del model  # free its weights before the next fit
    return best, history
