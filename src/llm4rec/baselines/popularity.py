"""Popularity: every user gets the items ranked by train interactions (docs/method.md 7.5)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from llm4rec.baselines.common import binary_train_matrix


class Popularity:
    """Scores every item by its train interaction count (same list for every user)."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train_csr: sp.spmatrix) -> Popularity:
        self.counts = np.asarray(binary_train_matrix(train_csr).sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.counts is None:
            raise RuntimeError("Popularity.fit must be called first")
        row = torch.from_numpy(self.counts)
        return row.unsqueeze(0).expand(len(users), -1).clone()
