"""Multi-VAE (Liang et al. 2018): a variational autoencoder over each user's train items,
600-200, dropout 0.5, the KL weight annealed, the best validation epoch kept (docs/method.md 7.5).

Like every baseline it exposes ``score(users) -> torch.Tensor [B, I]`` for
:class:`llm4rec.metrics.RankingEvaluator`, which masks train items and breaks ties by item id.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from llm4rec.baselines.common import as_user_array, binary_train_matrix, metrics_line
from llm4rec.core.constants import DEFAULT_KS_NDCG, DEFAULT_KS_RECALL
from llm4rec.metrics import RankingEvaluator, selection_score

log = logging.getLogger(__name__)


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


def sparse_rows(x: sp.csr_matrix, users: np.ndarray | Sequence[int]) -> SparseRows:
    """Rows ``users`` of a scipy CSR matrix as a float32 :class:`SparseRows` batch [B, I]."""
    sub = sp.csr_matrix(x[as_user_array(users)])
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
    x = binary_train_matrix(train_csr)
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
            metrics_line(metrics),
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
