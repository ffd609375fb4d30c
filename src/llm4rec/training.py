"""Pre-training and fine-tuning (docs/method.md section 6): the `pretrain` and `finetune`
stages, started by their rules as `accelerate launch -m llm4rec.training {pretrain,finetune} ...`.

One process or several (one per GPU, or `--multi_gpu` CPU processes for tests): every
global batch is the same list of examples whatever the process count; each process takes
a contiguous share and the per-process objective is rescaled so that the averaged
gradient equals the single-process one (mean loss over the global batch's target tokens,
whose count is summed over the processes; regularization summed over the batch).
Fine-tuning validates with `evaluation.Scorer` after each epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checkpoint import Checkpoint, TrainingState
from .collate import MICRO_BATCH_TOKENS, EdgeAwareCollator, global_batches, micro_batches
from .encoding import GRAPH_KINDS, Examples, build_collab_examples, build_finetune_examples
from .evaluation import METRICS, Scorer, evaluate_split
from .logutil import progress, readable
from .metrics import selection_score
from .model import EdgeAwareRecModel, build_model, max_length
from .stage import PretrainSettings, RunSettings, StagePaths, parse_args, stage_lock, start
from .tokenization import pad_token_id

log = logging.getLogger("llm4rec.training")


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


# --- one optimizer step over several processes ------------------------------------------


def local_share(batch: np.ndarray, n_proc: int, rank: int) -> tuple[np.ndarray, float]:
    """This process's contiguous share of a global batch and its weight (share / batch size).

    A process left without examples (batch smaller than the process count) reruns the
    first example with weight 0, so that every process joins the gradient all-reduce. The
    loss is not weighted by examples but by target tokens (`_run_step`); a weight of 0 makes
    the process contribute nothing.
    """
    part = np.array_split(batch, n_proc)[rank]
    if len(part) == 0:
        return batch[:1], 0.0
    return part, len(part) / len(batch)


def _n_targets(batch: dict, step: str) -> int:
    """What the step's mean loss averages over: target tokens, or examples when fine-tuning."""
    if step == "finetune":
        return int(batch["input_ids"].shape[0])
    return int((batch["labels"][:, 1:] != -100).sum())


def global_count(acc, local: float) -> float:
    """A count summed over all processes (the local count itself with one process)."""
    if acc.num_processes == 1:
        return local
    t = torch.tensor([local], dtype=torch.float64, device=acc.device)
    return float(acc.reduce(t, reduction="sum").item())


class _Steps(nn.Module):
    """Routes every step through `forward`, so DistributedDataParallel syncs gradients."""

    def __init__(self, model: EdgeAwareRecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: str, regularize: bool = False):
        if step == "content":
            return self.model.content_step(batch, regularize)
        if step == "collab":
            return self.model.collab_step(batch)
        if step == "finetune":
            return self.model.finetune_step(batch)
        raise ValueError(step)


def _run_step(
    steps: nn.Module,
    acc,
    optimizer,
    examples: list[dict],
    collate: EdgeAwareCollator,
    step: str,
    regularize: bool,
    weight: float,
    where: str,
) -> tuple[float, float]:
    """One optimizer step over this process's share of a global batch.

    The share runs as length-sorted micro-batches whose gradients accumulate. Each
    micro-batch's mean loss is weighted by its targets over the global batch's targets (all
    processes'), so that after DDP's averaging the objective is the token mean over the
    global batch whatever the process count; the regularizer stays a sum. Returns this
    share's mean loss and its regularizer sum.
    """
    lengths = np.array([len(x["input_ids"]) for x in examples])
    batches = [collate([examples[int(n)] for n in g]) for g in micro_batches(lengths, MICRO_BATCH_TOKENS)]
    counts = np.array([_n_targets(b, step) for b in batches], dtype=np.float64)
    local = counts.sum()
    total = global_count(acc, float(local) if weight > 0 else 0.0)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, reg_sum = 0.0, 0.0
    for k, batch in enumerate(batches):
        share = counts[k] / total if total > 0 and weight > 0 else 0.0
        sync = acc.no_sync(steps) if k < len(batches) - 1 else contextlib.nullcontext()
        with sync:
            loss, reg = steps(batch, step, regularize)
            if not (torch.isfinite(loss) and torch.isfinite(reg)):
                raise NonFiniteLossError(f"non-finite loss at {where} (loss={loss.item()}, reg={reg.item()})")
            # Averaged over processes: the global batch's mean loss plus its summed regularizer.
            objective = (loss * share + reg * (weight > 0)) * acc.num_processes
            acc.backward(objective)
        loss_sum += float(loss.detach()) * (counts[k] / local if local > 0 else 0.0)
        reg_sum += float(reg.detach())
    optimizer.step()
    return loss_sum, reg_sum


def _epoch(
    steps,
    acc,
    optimizer,
    examples: Examples,
    collate: EdgeAwareCollator,
    batch_size: int,
    step: str,
    regularize: bool,
    label: str,
    order: np.ndarray | None = None,
    lr_at=None,
    first_step: int = 0,
) -> dict:
    t0 = time.time()
    losses, regs, sizes = [], [], []
    batches = global_batches(len(examples), batch_size, order)
    bar = progress(batches, desc=label, disable=not acc.is_local_main_process, logger=log)
    for b, gb in enumerate(bar):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + b)
        part, weight = local_share(gb, acc.num_processes, acc.process_index)
        loss, reg = _run_step(
            steps,
            acc,
            optimizer,
            [examples[int(n)] for n in part],
            collate,
            step,
            regularize,
            weight,
            f"{label}, batch {b}",
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


# --- stages ----------------------------------------------------------------------------


def _select_content(examples: Examples, with_second_order: bool) -> Examples:
    if with_second_order:
        return examples
    return examples.subset(np.flatnonzero(~np.isin(examples.kind, sorted(GRAPH_KINDS))))


def pretrain_schedule(p: PretrainSettings) -> list[tuple[str, bool]]:
    """(kind, regularize) per pre-training epoch: content first, then collaborative epochs
    with a content epoch after every `content_every`-th (docs/method.md 6.2)."""
    plan = [("content", False)] * p.content_epochs
    for e in range(1, p.collab_epochs + 1):
        plan.append(("collab", True))
        if p.content_every and e % p.content_every == 0:
            plan.append(("content", True))
    return plan


def pretrain(paths: StagePaths, settings: RunSettings, fingerprint: str, threads: int | None = None) -> None:
    """Content + collaborative pre-training; writes the last epoch's model and history."""
    seed, m, p = settings.seed, settings.model, settings.pretrain
    acc, data, index, tokenizer = start(paths, settings, threads)
    model = build_model(m, tokenizer, data.n_users, data.n_items, index, seed)
    max_len = max_length(model, m)
    ev = model.entity_vocab
    content = _select_content(Examples.load(paths.content), m.second_order)
    too_long = content.lengths() > max_len
    if too_long.any():
        raise ValueError(
            f"{int(too_long.sum())} content examples exceed the context ({max_len}); "
            "re-encode with the backbone's max_length"
        )
    entity_ids = content.ids[content.ids >= ev.vocab]
    model.set_content_nodes(torch.from_numpy(np.unique(entity_ids - ev.vocab)))
    log.info(
        "content: %d examples; %d of %d users and %d of %d items occur in one",
        len(content),
        int(model.has_content[: ev.n_users].sum()),
        ev.n_users,
        int(model.has_content[ev.n_users :].sum()),
        ev.n_items,
    )
    collab = build_collab_examples(data.train_items, tokenizer, ev, max_len, seed)
    collate = EdgeAwareCollator(ev, index, m.edge_bias, pad_token_id(tokenizer))
    opts = {side: make_optimizer(model.side_parameters(side), p.lr, p.weight_decay) for side in ("content", "collab")}
    ckpt = Checkpoint(paths.ckpt, fingerprint)
    state = _resume(ckpt, model, opts, "pretrain")
    acc.wait_for_everyone()
    steps = acc.prepare(_Steps(model))
    opts = {k: acc.prepare(o) for k, o in opts.items()}
    plan = pretrain_schedule(p)
    for epoch in range(state.epoch + 1, len(plan)):
        kind, reg = plan[epoch]
        label = f"pretrain epoch {epoch} ({kind})"
        if kind == "content" and len(content) == 0:
            log.info(
                "%s: skipped, the dataset has no content examples (no texts, titles, brands, "
                "categories or second-order groups)",
                label,
            )
            row = None
        elif kind == "content":
            order = np.random.default_rng([seed, epoch]).permutation(len(content))
            row = _epoch(steps, acc, opts["content"], content, collate, p.batch_content, "content", reg, label, order)
        else:
            row = _epoch(steps, acc, opts["collab"], collab, collate, p.batch_collab, "collab", True, label)
        if row is not None:
            log.info("%s: %s", label, readable(row))
            row = {"epoch": epoch, "kind": kind, **row}
            state.history.append(row)
        state.epoch = epoch
        if acc.is_main_process:
            ckpt.save(_unwrap(acc, steps).model, {k: _unwrap_opt(o) for k, o in opts.items()}, state, improved=False)
        acc.wait_for_everyone()
    if acc.is_main_process:
        model = _unwrap(acc, steps).model
        model.save(paths.out)
        pd.DataFrame(state.history).to_csv(paths.out / "history.csv", index=False)
        ckpt.clear()
    acc.wait_for_everyone()
    acc.end_training()


def finetune(paths: StagePaths, settings: RunSettings, fingerprint: str, threads: int | None = None) -> None:
    """Recommendation fine-tuning with validation, early stopping and resumable state."""
    seed, m, f = settings.seed, settings.model, settings.finetune
    acc, data, index, tokenizer = start(paths, settings, threads)
    model = EdgeAwareRecModel.load(
        paths.pretrained, attn_implementation=m.attn_implementation, gradient_checkpointing=m.gradient_checkpointing
    )
    # Content tables are regularization targets only (docs/method.md 6.3).
    for side_table in ("content_user", "content_item"):
        model.tables[side_table].weight.requires_grad_(False)
    max_len = max_length(model, m)
    ev = model.entity_vocab
    collate = EdgeAwareCollator(ev, index, model.edge_bias, pad_token_id(tokenizer))
    opt = make_optimizer(model.side_parameters("collab"), f.lr, f.weight_decay)
    ckpt = Checkpoint(paths.ckpt, fingerprint)
    state = _resume(ckpt, model, {"rec": opt}, "finetune")
    acc.wait_for_everyone()
    scorer = Scorer(model, tokenizer, data, index, max_len, settings.evaluate.batch_size)
    steps = acc.prepare(_Steps(model))
    opt = acc.prepare(opt)
    per_epoch = math.ceil(sum(len(t) > 0 for t in data.train_items) / f.batch_size)
    lr_at = lr_schedule(f.lr, per_epoch * f.epochs, f.warmup_steps, f.lr_decay)
    for epoch in range(state.epoch + 1, f.epochs):
        if state.bad_epochs >= f.patience:
            break
        examples = build_finetune_examples(data.train_items, tokenizer, ev, max_len, seed, epoch, f.hide_frac)
        row = _epoch(
            steps,
            acc,
            opt,
            examples,
            collate,
            f.batch_size,
            "finetune",
            False,
            f"finetune epoch {epoch}",
            lr_at=lr_at,
            first_step=epoch * per_epoch,
        )
        val = evaluate_split(scorer, data, "val", acc)["metrics"]
        score = selection_score(val)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
        row = {"epoch": epoch, **row, **{f"val_{k}": val[k] for k in METRICS}, "val_score": score}
        verdict = "best so far" if improved else f"no improvement {state.bad_epochs}/{f.patience}"
        log.info(
            "finetune epoch %d: %s; validation %s, score %.4f (%s)",
            epoch,
            readable({k: row[k] for k in ("loss", "seconds")}),
            readable({k: val[k] for k in METRICS}),
            score,
            verdict,
        )
        state.history.append(row)
        state.epoch = epoch
        if acc.is_main_process:
            ckpt.save(_unwrap(acc, steps).model, {"rec": _unwrap_opt(opt)}, state, improved)
        acc.wait_for_everyone()
    _log_finetune_end(state, f.epochs, f.patience)
    if acc.is_main_process:
        model = _unwrap(acc, steps).model
        if ckpt.best_weights().is_file():
            ckpt.load_best(model)
        model.save(paths.out)
        pd.DataFrame(state.history).to_csv(paths.out / "history.csv", index=False)
        best = next(r for r in state.history if r["epoch"] == state.best_epoch)
        (paths.out / "best.json").write_text(
            json.dumps({"epoch": state.best_epoch, "val": {k: best[f"val_{k}"] for k in METRICS}}, indent=2) + "\n"
        )
        ckpt.clear()
    acc.wait_for_everyone()
    acc.end_training()


def _log_finetune_end(state: TrainingState, epochs: int, patience: int) -> None:
    """Say why fine-tuning ended (early stop or the last epoch) and which epoch it keeps."""
    ran = state.epoch + 1
    if ran < epochs:
        why = (
            f"stopped early after epoch {state.epoch} ({ran} of {epochs} epochs): no better "
            f"validation score in {state.bad_epochs} epochs (patience {patience})"
        )
    else:
        why = f"ran all {epochs} epochs"
    log.info("finetune: %s; keeping the best epoch, %d (score %.4f)", why, state.best_epoch, state.best_score)


def _resume(ckpt: Checkpoint, model: nn.Module, opts: dict, stage: str) -> TrainingState:
    state = ckpt.load(model, opts)
    if state is None:
        log.info("%s: starting at epoch 0 (no checkpoint with this fingerprint)", stage)
        return TrainingState()
    log.info("%s: resuming after epoch %d from %s", stage, state.epoch, ckpt.dir)
    return state


def _unwrap(acc, module: nn.Module) -> nn.Module:
    return acc.unwrap_model(module)


def _unwrap_opt(opt):
    return getattr(opt, "optimizer", opt)


STAGES = {
    "pretrain": {
        "--content": {"type": Path, "required": True},
        "--out": {"type": Path, "required": True},
        "--ckpt": {"type": Path, "required": True},
    },
    "finetune": {
        "--pretrained": {"type": Path, "required": True},
        "--out": {"type": Path, "required": True},
        "--ckpt": {"type": Path, "required": True},
    },
}


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m llm4rec.training {pretrain,finetune} ...`, as the rules run it.

    The checkpoint fingerprint covers the settings object as passed, the library version and
    every input (the stage's and the tokenizer's; for a materialized backbone its provenance
    record, which holds the weights' sha256), so a resumed state is one of this run.
    """
    from .backbone_store import provenance_path
    from .checkpoint import fingerprint

    args = parse_args("training", STAGES, argv)
    previous = args.content if args.stage == "pretrain" else args.pretrained
    inputs = [args.processed, args.graph, previous] + ([args.tokenizer] if args.tokenizer else [])
    backbone = args.settings["model"]["backbone"]
    if backbone != "tiny" and provenance_path(backbone).is_file():
        inputs.append(provenance_path(backbone))
    paths = StagePaths(
        processed=args.processed,
        graph=args.graph,
        tokenizer=args.tokenizer,
        out=args.out,
        ckpt=args.ckpt,
        content=getattr(args, "content", None),
        pretrained=getattr(args, "pretrained", None),
    )
    stage = pretrain if args.stage == "pretrain" else finetune
    with stage_lock(args.out.parent, args.stage):
        stage(
            paths, RunSettings.from_dict(args.settings), fingerprint(args.settings, args.version, inputs), args.threads
        )


if __name__ == "__main__":
    main()
