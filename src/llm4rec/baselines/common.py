"""Helpers the baselines share: binary train matrices, user id arrays, metric lines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def binary_train_matrix(x: sp.spmatrix) -> sp.csr_matrix:
    """Train matrix as binary float32 CSR (duplicates and explicit zeros removed)."""
    csr = sp.csr_matrix(x, dtype=np.float32, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.data[:] = 1.0
    return csr


def as_user_array(users: np.ndarray | Sequence[int]) -> np.ndarray:
    return np.asarray(users, dtype=np.int64)


def metrics_line(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "users")
