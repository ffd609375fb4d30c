"""Pre-training and fine-tuning (docs/method.md section 6): the `pretrain` and `finetune`
stages, started by their rules as `accelerate launch -m llm4rec.train.loop {pretrain,finetune} ...`.

Each stage builds its model and examples, resumes from its checkpoint, then runs the epochs
of its plan (`llm4rec.train.steps`, one process or several); fine-tuning validates with
`llm4rec.train.evaluate.Scorer` after each epoch and keeps the best.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from llm4rec.core.constants import METRICS
from llm4rec.core.logs import readable
from llm4rec.metrics import selection_score
from llm4rec.model.collate import EdgeAwareCollator
from llm4rec.model.edge_model import EdgeAwareRecModel, build_model
from llm4rec.model.encoding import GRAPH_KINDS, Examples, build_collab_examples, build_finetune_examples
from llm4rec.model.settings import context_length
from llm4rec.model.tokenization import pad_token_id
from llm4rec.train.checkpoint import Checkpoint, TrainingState
from llm4rec.train.evaluate import Scorer, evaluate_split
from llm4rec.train.stage import PretrainSettings, RunSettings, StagePaths, parse_args, stage_lock, start
from llm4rec.train.steps import EpochPlan, StepKind, StepModule, Trainer, lr_schedule, make_optimizer, run_epoch

log = logging.getLogger("llm4rec.train.loop")


def _select_content(examples: Examples, with_second_order: bool) -> Examples:
    if with_second_order:
        return examples
    return examples.subset(np.flatnonzero(~np.isin(examples.kind, sorted(GRAPH_KINDS))))


def pretrain_schedule(p: PretrainSettings) -> list[tuple[StepKind, bool]]:
    """(kind, regularize) per pre-training epoch: content first, then collaborative epochs
    with a content epoch after every `content_every`-th (docs/method.md 6.2)."""
    plan = [(StepKind.CONTENT, False)] * p.content_epochs
    for e in range(1, p.collab_epochs + 1):
        plan.append((StepKind.COLLAB, True))
        if p.content_every and e % p.content_every == 0:
            plan.append((StepKind.CONTENT, True))
    return plan


def pretrain(paths: StagePaths, settings: RunSettings, fingerprint: str, threads: int | None = None) -> None:
    """Content + collaborative pre-training; writes the last epoch's model and history."""
    seed, m, p = settings.seed, settings.model, settings.pretrain
    acc, data, index, tokenizer = start(paths, settings, threads)
    model = build_model(m, tokenizer, data.n_users, data.n_items, index, seed)
    max_len = context_length(model.lm.config, m.max_length)
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
    trainer = Trainer(acc.prepare(StepModule(model)), acc, collate)
    opts = {k: acc.prepare(o) for k, o in opts.items()}
    plan = pretrain_schedule(p)
    for epoch in range(state.epoch + 1, len(plan)):
        kind, regularize = plan[epoch]
        label = f"pretrain epoch {epoch} ({kind.value})"
        if kind is StepKind.CONTENT and len(content) == 0:
            log.info(
                "%s: skipped, the dataset has no content examples (no texts, titles, brands, "
                "categories or second-order groups)",
                label,
            )
            row = None
        elif kind is StepKind.CONTENT:
            order = np.random.default_rng([seed, epoch]).permutation(len(content))
            epoch_plan = EpochPlan(kind, content, p.batch_content, label, regularize, order)
            row = run_epoch(trainer, opts["content"], epoch_plan)
        else:
            row = run_epoch(trainer, opts["collab"], EpochPlan(kind, collab, p.batch_collab, label, regularize))
        if row is not None:
            log.info("%s: %s", label, readable(row))
            row = {"epoch": epoch, "kind": kind.value, **row}
            state.history.append(row)
        state.epoch = epoch
        if acc.is_main_process:
            ckpt.save(
                _unwrap(acc, trainer.steps).model, {k: _unwrap_opt(o) for k, o in opts.items()}, state, improved=False
            )
        acc.wait_for_everyone()
    if acc.is_main_process:
        model = _unwrap(acc, trainer.steps).model
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
    if f.shared_users:
        n_shared = model.share_contentless_users()
        log.info("finetune: %d users without content share one user vector", n_shared)
    if f.untied_head:
        model.untie_head()
        log.info("finetune: the recommendation head has its own item table (untied_head)")
    # Content tables are regularization targets only (docs/method.md 6.3).
    for side_table in ("content_user", "content_item"):
        model.tables[side_table].weight.requires_grad_(False)
    max_len = context_length(model.lm.config, m.max_length)
    ev = model.entity_vocab
    collate = EdgeAwareCollator(ev, index, model.edge_bias, pad_token_id(tokenizer))
    opt = make_optimizer(model.side_parameters("collab"), f.lr, f.weight_decay)
    ckpt = Checkpoint(paths.ckpt, fingerprint)
    state = _resume(ckpt, model, {"rec": opt}, "finetune")
    acc.wait_for_everyone()
    scorer = Scorer(model, tokenizer, data, index, max_len, settings.evaluate.batch_size)
    trainer = Trainer(acc.prepare(StepModule(model)), acc, collate)
    opt = acc.prepare(opt)
    per_epoch = math.ceil(sum(len(t) > 0 for t in data.train_items) / f.batch_size)
    epochs, patience = f.stretched(per_epoch)
    if epochs > f.epochs:
        log.info(
            "finetune: %d epochs instead of %d and patience %d instead of %d, to reach min_steps %d "
            "at %d steps per epoch",
            epochs,
            f.epochs,
            patience,
            f.patience,
            f.min_steps,
            per_epoch,
        )
    lr_at = lr_schedule(f.lr, per_epoch * epochs, f.warmup_steps, f.lr_decay)
    for epoch in range(state.epoch + 1, epochs):
        if state.bad_epochs >= patience:
            break
        examples = build_finetune_examples(data.train_items, tokenizer, ev, max_len, seed, epoch, f.hide_frac)
        label = f"finetune epoch {epoch}"
        epoch_plan = EpochPlan(
            StepKind.FINETUNE, examples, f.batch_size, label, lr_at=lr_at, first_step=epoch * per_epoch
        )
        row = run_epoch(trainer, opt, epoch_plan)
        val = evaluate_split(scorer, data, "val", acc)["metrics"]
        score = selection_score(val)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
        row = {"epoch": epoch, **row, **{f"val_{k}": val[k] for k in METRICS}, "val_score": score}
        verdict = "best so far" if improved else f"no improvement {state.bad_epochs}/{patience}"
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
            ckpt.save(_unwrap(acc, trainer.steps).model, {"rec": _unwrap_opt(opt)}, state, improved)
        acc.wait_for_everyone()
    _log_finetune_end(state, epochs, patience)
    if acc.is_main_process:
        model = _unwrap(acc, trainer.steps).model
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
    """`python -m llm4rec.train.loop {pretrain,finetune} ...`, as the rules run it.

    The checkpoint fingerprint covers the settings object as passed, the library version and
    every input (the stage's and the tokenizer's; for a materialized backbone its provenance
    record, which holds the weights' sha256), so a resumed state is one of this run.
    """
    from llm4rec.model.backbone_store import provenance_path
    from llm4rec.train.checkpoint import fingerprint

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
