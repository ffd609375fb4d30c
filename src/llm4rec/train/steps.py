"""One optimizer step and one epoch over several processes (docs/method.md section 6).

Every global batch is the same list of examples whatever the process count; each process
takes a contiguous share and the per-process objective is rescaled so that the averaged
gradient equals the single-process one (mean loss over the global batch's targets, whose
count is summed over the processes; regularization summed over the batch).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch import nn

from llm4rec.core.constants import IGNORE_INDEX
from llm4rec.core.logs import progress
from llm4rec.model.collate import MICRO_BATCH_TOKENS, EdgeAwareCollator, global_batches, micro_batches
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.encoding import Examples

# Progress lines appear under the stage's logger, whose log the rules keep.
log = logging.getLogger("llm4rec.train.loop")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names stage, epoch and batch."""


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (the seed's); with `weight_decay` > 0, AdamW's decoupled decay on every parameter.

    The fused kernel (one pass over each tensor) where every parameter's device has one: on
    CPU it is about 4x faster than the per-op loop over the dense entity tables.
    """
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def lr_schedule(lr: float, total_steps: int, warmup_steps: int = 0, decay: str = "constant"):
    """The learning rate at each optimizer step: linear warm-up over `warmup_steps`, then
    constant or cosine decay to 0 at `total_steps`. A pure function of the step, so that a
    resumed run continues on the same curve without a scheduler state."""

    def at(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        if decay == "cosine":
            span = max(1, total_steps - warmup_steps)
            return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))
        return lr

    return at


class StepKind(StrEnum):
    """What an optimizer step trains (docs/method.md 6.1-6.3); the value is the history's `kind`."""

    CONTENT = "content"  # the content side: language modelling of reviews, titles, groups
    COLLAB = "collab"  # the collaborative side: a user's items, predicted one after another
    FINETUNE = "finetune"  # recommendation: the hidden items from the visible ones


class StepModule(nn.Module):
    """Routes every step through `forward`, so DistributedDataParallel syncs gradients."""

    def __init__(self, model: EdgeAwareRecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict, kind: StepKind, regularize: bool = False):
        kind = StepKind(kind)
        if kind is StepKind.CONTENT:
            return self.model.content_step(batch, regularize)
        if kind is StepKind.COLLAB:
            return self.model.collab_step(batch)
        return self.model.finetune_step(batch)


@dataclass(frozen=True)
class Trainer:
    """What every step of a stage uses: the (DDP-wrapped) step module, the accelerator and
    the collator."""

    steps: nn.Module
    acc: Any
    collate: EdgeAwareCollator


@dataclass(frozen=True)
class EpochPlan:
    """One pass over `examples` in global batches of `batch_size` (in `order`, or as stored),
    each batch one optimizer step of `kind`; `lr_at` sets the rate at each global step,
    counted from `first_step`."""

    kind: StepKind
    examples: Examples
    batch_size: int
    label: str
    regularize: bool = False
    order: np.ndarray | None = None
    lr_at: Callable[[int], float] | None = None
    first_step: int = 0


def local_share(batch: np.ndarray, n_proc: int, rank: int) -> tuple[np.ndarray, float]:
    """This process's contiguous share of a global batch and its weight (share / batch size).

    A process left without examples (batch smaller than the process count) reruns the
    first example with weight 0, so that every process joins the gradient all-reduce. The
    loss itself is weighted by the step's targets (`n_targets`: target tokens, or examples
    when fine-tuning), not by this share; a weight of 0 makes the process contribute nothing.
    """
    part = np.array_split(batch, n_proc)[rank]
    if len(part) == 0:
        return batch[:1], 0.0
    return part, len(part) / len(batch)


def n_targets(batch: dict, kind: StepKind) -> int:
    """What the step's mean loss averages over: target tokens, or examples when fine-tuning."""
    if kind == StepKind.FINETUNE:
        return int(batch["input_ids"].shape[0])
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def global_count(acc, local: float) -> float:
    """A count summed over all processes (the local count itself with one process)."""
    if acc.num_processes == 1:
        return local
    t = torch.tensor([local], dtype=torch.float64, device=acc.device)
    return float(acc.reduce(t, reduction="sum").item())


def run_step(
    trainer: Trainer,
    optimizer,
    examples: list[dict],
    kind: StepKind,
    regularize: bool,
    weight: float,
    where: str,
) -> tuple[float, float]:
    """One optimizer step over this process's share of a global batch.

    The share runs as length-sorted micro-batches whose gradients accumulate. Each
    micro-batch's mean loss is weighted by its targets over the global batch's targets (all
    processes'), so that after DDP's averaging the objective is the target mean over the
    global batch whatever the process count; the regularizer stays a sum. Returns this
    share's mean loss and its regularizer sum.
    """
    acc, steps = trainer.acc, trainer.steps
    lengths = np.array([len(x["input_ids"]) for x in examples])
    batches = [trainer.collate([examples[int(n)] for n in g]) for g in micro_batches(lengths, MICRO_BATCH_TOKENS)]
    counts = np.array([n_targets(b, kind) for b in batches], dtype=np.float64)
    local = counts.sum()
    total = global_count(acc, float(local) if weight > 0 else 0.0)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, reg_sum = 0.0, 0.0
    for k, batch in enumerate(batches):
        share = counts[k] / total if total > 0 and weight > 0 else 0.0
        sync = acc.no_sync(steps) if k < len(batches) - 1 else contextlib.nullcontext()
        with sync:
            loss, reg = steps(batch, kind, regularize)
            if not (torch.isfinite(loss) and torch.isfinite(reg)):
                raise NonFiniteLossError(f"non-finite loss at {where} (loss={loss.item()}, reg={reg.item()})")
            # Averaged over processes: the global batch's mean loss plus its summed regularizer.
            objective = (loss * share + reg * (weight > 0)) * acc.num_processes
            acc.backward(objective)
        loss_sum += float(loss.detach()) * (counts[k] / local if local > 0 else 0.0)
        reg_sum += float(reg.detach())
    optimizer.step()
    return loss_sum, reg_sum


def run_epoch(trainer: Trainer, optimizer, plan: EpochPlan) -> dict:
    """Every global batch of `plan` as one optimizer step; the epoch's mean loss (weighted by
    batch size), regularizer sum and seconds."""
    acc = trainer.acc
    t0 = time.time()
    losses, regs, sizes = [], [], []
    batches = global_batches(len(plan.examples), plan.batch_size, plan.order)
    bar = progress(batches, desc=plan.label, disable=not acc.is_local_main_process, logger=log)
    for b, gb in enumerate(bar):
        if plan.lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = plan.lr_at(plan.first_step + b)
        part, weight = local_share(gb, acc.num_processes, acc.process_index)
        examples = [plan.examples[int(n)] for n in part]
        loss, reg = run_step(
            trainer, optimizer, examples, plan.kind, plan.regularize, weight, f"{plan.label}, batch {b}"
        )
        losses.append(loss)
        regs.append(reg)
        sizes.append(len(gb))
        bar.set_postfix(loss=f"{np.average(losses, weights=sizes):.4f}")
    return {
        "loss": float(np.average(losses, weights=sizes)) if losses else math.nan,
        "reg": float(np.sum(regs)),
        "seconds": time.time() - t0,
    }
