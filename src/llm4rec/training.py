"""Pre-training, fine-tuning and evaluation (docs/method.md sections 6-7), under `accelerate`.

One process or several (one per GPU, or `--multi_gpu` CPU processes for tests): every
global batch is the same list of examples whatever the process count; each process takes
a contiguous share and the per-process objective is rescaled so that the averaged
gradient equals the single-process one (mean loss over the global batch's target tokens,
whose count is summed over the processes; regularization summed over the batch).
Evaluation gives each process whole batches, so scores, and hence metrics, do not depend
on the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checkpoint import Checkpoint, TrainingState
from .collate import EdgeAwareCollator
from .graph import RelationIndex
from .logutil import progress
from .metrics import RankingEvaluator, selection_score, split_matrices
from .model import EdgeAwareRecModel, build_tiny_backbone, context_length, load_backbone
from .prompts import GRAPH_KINDS, Examples, build_collab_examples, build_content_examples, build_eval_examples, \
    build_finetune_examples, train_items_by_user
from .tokenization import EntityVocab, load_tokenizer, pad_token_id

log = logging.getLogger("llm4rec.training")
METRIC_KEYS = ("Recall@20", "Recall@40", "NDCG@100")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names stage, epoch and batch."""


# --- set-up ----------------------------------------------------------------------------


def make_accelerator(seed: int, threads: int | None = None):
    """An `Accelerator` on the GPUs when visible, else on CPU (one or several processes)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed

    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    acc = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    if threads:
        # The job's threads are shared by its processes (oversubscribed CPUs run ~10x slower).
        torch.set_num_threads(max(1, int(threads) // acc.num_processes))
    set_seed(seed)
    log.info("accelerate: %s processes of type %s (process %d), device %s, mixed precision %s",
             acc.num_processes, acc.distributed_type, acc.process_index, acc.device, acc.mixed_precision)
    return acc


@dataclass
class Data:
    """The processed tables and what every stage derives from them."""

    n_users: int
    n_items: int
    interactions: pd.DataFrame
    train_items: list[np.ndarray]
    matrices: dict


def load_data(processed: str | Path) -> Data:
    processed = Path(processed)
    n_users = len(pd.read_parquet(processed / "users.parquet", columns=["uid"]))
    n_items = len(pd.read_parquet(processed / "items.parquet", columns=["iid"]))
    inter = pd.read_parquet(processed / "interactions.parquet", columns=["uid", "iid", "split"])
    return Data(n_users, n_items, inter, train_items_by_user(inter, n_users),
                split_matrices(inter, n_users, n_items))


def load_index(model_settings: dict, graph_dir: str | Path | None) -> RelationIndex | None:
    """The relation index, unless the variant uses no bias at all."""
    if model_settings["edge_bias"] == "none" or graph_dir is None:
        return None
    return RelationIndex.load(graph_dir)


def tokenizer_source(model_settings: dict, tokenizer_dir: str | Path | None) -> str:
    if model_settings["backbone"] == "tiny":
        if tokenizer_dir is None:
            raise ValueError("backbone 'tiny' needs the tokenizer trained by the `tokenizer` rule")
        return str(tokenizer_dir)
    return model_settings["backbone"]


def build_model(model_settings: dict, tokenizer, data: Data, index: RelationIndex | None, seed: int) -> EdgeAwareRecModel:
    """Backbone (tiny from scratch, or any causal LM by name/path, in `model.dtype`, LoRA-wrapped
    with `model.lora`) plus the entity tables."""
    torch.manual_seed(seed)
    m = model_settings
    dtype = m.get("dtype", "float32")
    if m["backbone"] == "tiny":
        if m.get("lora"):
            raise ValueError("model.lora needs a pre-trained backbone (a name or folder), not tiny")
        t = m["tiny"]
        backbone = build_tiny_backbone(len(tokenizer), n_layer=t["n_layer"], n_embd=t["n_embd"], n_head=t["n_head"],
                                       n_positions=t["n_positions"], attn_implementation=m["attn_implementation"],
                                       dropout=t.get("dropout", 0.1), dtype=dtype)
    else:
        backbone = load_backbone(m["backbone"], attn_implementation=m["attn_implementation"], dtype=dtype)
    return EdgeAwareRecModel(backbone, data.n_users, data.n_items, lambda_v=m["lambda_v"],
                             freeze_backbone=m["freeze_backbone"], edge_bias=m["edge_bias"],
                             d6=index.d6 if index is not None else 6,
                             max_hops=index.max_hops if index is not None else 5,
                             init_std=m.get("entity_init_std"), mutual_reg=m.get("mutual_reg", "all"),
                             lora=m.get("lora"), gradient_checkpointing=bool(m.get("gradient_checkpointing", False)))


def max_length(model: EdgeAwareRecModel, model_settings: dict) -> int:
    """Longest sequence: the backbone's context, or less when the config caps it."""
    cap = model_settings.get("max_length")
    return min(context_length(model.lm), cap) if cap else context_length(model.lm)


def tokenizer_corpus(items: pd.DataFrame, interactions: pd.DataFrame) -> list[str]:
    """Texts a from-scratch tokenizer learns from: train reviews and item fields only."""
    texts = interactions.loc[interactions["split"] == "train", "review_text"].dropna().tolist()
    for col in ("title", "brand", "description"):
        if col in items:
            texts += items[col].dropna().tolist()
    if "categories" in items:
        texts += [", ".join(c) for c in items["categories"] if c is not None and len(c)]
    return [str(t) for t in texts]


def backbone_geometry(backbone: str, tiny: dict, tokenizer, max_length: int | None) -> tuple[int, int]:
    """(input-embedding size, usable context) of a backbone, without loading its weights."""
    if backbone == "tiny":
        vocab, context = len(tokenizer), int(tiny["n_positions"])
    else:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(backbone, trust_remote_code=False)
        vocab = int(cfg.vocab_size)
        context = int(getattr(cfg, "n_positions", None) or cfg.max_position_embeddings)
    return vocab, min(context, max_length) if max_length else context


def encode_content(items: pd.DataFrame, interactions: pd.DataFrame, second_order: pd.DataFrame,
                   tokenizer_dir: str | Path | None, backbone: str, tiny: dict, max_length: int | None,
                   seed: int) -> Examples:
    """All content examples of a dataset, tokenized once (the `encode` rule caches them)."""
    tokenizer = load_tokenizer(tokenizer_dir if backbone == "tiny" else backbone)
    vocab, max_len = backbone_geometry(backbone, tiny, tokenizer, max_length)
    ev = EntityVocab(vocab, int(interactions["uid"].max()) + 1, len(items))
    return build_content_examples(items, interactions, second_order, tokenizer, ev, max_len, seed)


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


# --- batching --------------------------------------------------------------------------


def global_batches(n: int, batch_size: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """The same list of example-index batches on every process."""
    idx = np.arange(n) if order is None else order
    return [idx[k:k + batch_size] for k in range(0, n, batch_size)]


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


MICRO_BATCH_TOKENS = 4096


def micro_batches(lengths: np.ndarray, max_tokens: int = MICRO_BATCH_TOKENS) -> list[np.ndarray]:
    """Split examples (by their positions) into length-sorted groups of at most `max_tokens`
    padded tokens, so that short examples are not padded to the batch's longest."""
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for k in range(1, len(order)):
        if (k + 1 - start) * lengths[order[k]] > max_tokens:
            groups.append(order[start:k])
            start = k
    groups.append(order[start:])
    return groups


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


def _run_step(steps: nn.Module, acc, optimizer, examples: list[dict], collate: EdgeAwareCollator, step: str,
              regularize: bool, weight: float, where: str) -> tuple[float, float]:
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


def _epoch(steps, acc, optimizer, examples: Examples, collate: EdgeAwareCollator, batch_size: int,
           step: str, regularize: bool, label: str, order: np.ndarray | None = None,
           lr_at=None, first_step: int = 0) -> dict:
    t0 = time.time()
    losses, regs, sizes = [], [], []
    batches = global_batches(len(examples), batch_size, order)
    bar = progress(batches, desc=label, disable=not acc.is_local_main_process, logger=log)
    for b, gb in enumerate(bar):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + b)
        part, weight = local_share(gb, acc.num_processes, acc.process_index)
        loss, reg = _run_step(steps, acc, optimizer, [examples[int(n)] for n in part], collate, step,
                              regularize, weight, f"{label}, batch {b}")
        losses.append(loss)
        regs.append(reg)
        sizes.append(len(gb))
        bar.set_postfix(loss=f"{np.average(losses, weights=sizes):.4f}")
    return {"loss": float(np.average(losses, weights=sizes)) if losses else math.nan,
            "reg": float(np.sum(regs)), "seconds": time.time() - t0}


# --- evaluation ------------------------------------------------------------------------


class Scorer:
    """Scores users from their evaluation prompts (all train items, ascending)."""

    def __init__(self, model: EdgeAwareRecModel, tokenizer, data: Data, index: RelationIndex | None,
                 max_len: int, batch_size: int) -> None:
        self.model = model
        self.examples = build_eval_examples(data.train_items, tokenizer, model.entity_vocab, max_len)
        self.collate = EdgeAwareCollator(model.entity_vocab, index, model.edge_bias, pad_token_id(tokenizer))
        self.batch_size = batch_size
        self.max_tokens = max(MICRO_BATCH_TOKENS, int(self.examples.lengths().max()))

    @torch.no_grad()
    def __call__(self, uids: np.ndarray) -> torch.Tensor:
        """Scores `[len(uids), n_items]`, computed in length-sorted micro-batches (each
        user's scores depend only on its own prompt, not on its batch-mates' lengths)."""
        was_training = self.model.training
        self.model.eval()
        examples = [self.examples[int(u)] for u in uids]
        lengths = np.array([len(x["input_ids"]) for x in examples])
        scores = None
        for group in micro_batches(lengths, self.max_tokens):
            part = self.model.score(self.collate([examples[int(n)] for n in group])).float()
            if scores is None:
                scores = part.new_empty((len(uids), part.shape[1]))
            scores[torch.from_numpy(group).to(part.device)] = part
        self.model.train(was_training)
        return scores


def evaluate_split(scorer: Scorer, data: Data, split: str, acc, top_n: int = 0) -> dict:
    """Metrics over users with targets in ``split``; identical for any process count."""
    from accelerate.utils import gather_object

    evaluator = RankingEvaluator(data.matrices["train"], data.matrices[split], batch_size=scorer.batch_size)
    users = evaluator.users
    batches = global_batches(len(users), scorer.batch_size)
    mine = [b for k, b in enumerate(batches) if k % acc.num_processes == acc.process_index]
    my_users = users[np.concatenate(mine)] if mine else users[:0]
    if len(my_users):
        local = RankingEvaluator(data.matrices["train"], data.matrices[split], batch_size=scorer.batch_size,
                                 users=my_users).evaluate(scorer, top_n=top_n)
        per_user, top = local.per_user, local.top_k
    else:
        per_user, top = None, None
    parts = gather_object([(per_user, top)]) if acc.num_processes > 1 else [(per_user, top)]
    per_user = pd.concat([p for p, _ in parts if p is not None]).sort_values("uid", kind="stable").reset_index(drop=True)
    tops = [t for _, t in parts if t is not None]
    top = pd.concat(tops).sort_values(["uid", "rank"], kind="stable").reset_index(drop=True) if tops else None
    metrics = {k: float(per_user[k].to_numpy(np.float64).mean()) for k in METRIC_KEYS}
    metrics["users"] = int(len(per_user))
    return {"metrics": metrics, "per_user": per_user, "top_k": top}


# --- stages ----------------------------------------------------------------------------


@dataclass
class StagePaths:
    processed: Path
    graph: Path | None
    tokenizer: Path | None
    out: Path
    ckpt: Path
    content: Path | None = None  # encoded content examples
    pretrained: Path | None = None  # pretrain output (fine-tuning)
    finetuned: Path | None = None  # finetune output (evaluation)


def _select_content(examples: Examples, with_second_order: bool) -> Examples:
    if with_second_order:
        return examples
    return _subset(examples, np.flatnonzero(~np.isin(examples.kind, sorted(GRAPH_KINDS))))


def _subset(ex: Examples, rows: np.ndarray) -> Examples:
    parts = []
    for n in rows:
        s, e = ex.offsets[n], ex.offsets[n + 1]
        si, ei = ex.item_offsets[n], ex.item_offsets[n + 1]
        parts.append((ex.ids[s:e], ex.items[si:ei]))
    lens = np.array([len(p[0]) for p in parts], dtype=np.int64)
    ilens = np.array([len(p[1]) for p in parts], dtype=np.int64)
    return Examples(
        ids=np.concatenate([p[0] for p in parts]) if parts else ex.ids[:0],
        offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        prompt_len=ex.prompt_len[rows], kind=ex.kind[rows], uid=ex.uid[rows],
        items=np.concatenate([p[1] for p in parts]) if parts else ex.items[:0],
        item_offsets=np.concatenate([[0], np.cumsum(ilens)]).astype(np.int64),
    )


def _setup(paths: StagePaths, settings: dict, threads: int | None):
    """What every stage starts from: accelerator, data, relation index, tokenizer."""
    m = settings["model"]
    acc = make_accelerator(settings["seed"], threads)
    return (acc, load_data(paths.processed), load_index(m, paths.graph),
            load_tokenizer(tokenizer_source(m, paths.tokenizer)))


def pretrain_schedule(p: dict) -> list[tuple[str, bool]]:
    """(kind, regularize) per pre-training epoch: content first, then collaborative epochs
    with a content epoch after every `content_every`-th (docs/method.md 6.2)."""
    plan = [("content", False)] * p["content_epochs"]
    for e in range(1, p["collab_epochs"] + 1):
        plan.append(("collab", True))
        if p["content_every"] and e % p["content_every"] == 0:
            plan.append(("content", True))
    return plan


def pretrain(paths: StagePaths, settings: dict, fingerprint: str, threads: int | None = None) -> None:
    """Content + collaborative pre-training; writes the last epoch's model and history."""
    seed, m, p = settings["seed"], settings["model"], settings["pretrain"]
    acc, data, index, tokenizer = _setup(paths, settings, threads)
    model = build_model(m, tokenizer, data, index, seed)
    max_len = max_length(model, m)
    ev = model.entity_vocab
    content = _select_content(Examples.load(paths.content), m["second_order"])
    too_long = content.lengths() > max_len
    if too_long.any():
        raise ValueError(f"{int(too_long.sum())} content examples exceed the context ({max_len}); "
                         "re-encode with the backbone's max_length")
    entity_ids = content.ids[content.ids >= ev.vocab]
    model.set_content_nodes(torch.from_numpy(np.unique(entity_ids - ev.vocab)))
    log.info("content: %d examples; %d of %d users and %d of %d items occur in one",
             len(content), int(model.has_content[:ev.n_users].sum()), ev.n_users,
             int(model.has_content[ev.n_users:].sum()), ev.n_items)
    collab = build_collab_examples(data.train_items, tokenizer, ev, max_len, seed)
    collate = EdgeAwareCollator(ev, index, m["edge_bias"], pad_token_id(tokenizer))
    opts = {side: make_optimizer(model.side_parameters(side), p["lr"], p.get("weight_decay", 0.0))
            for side in ("content", "collab")}
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
            log.info("%s: skipped, the dataset has no content examples (no texts, titles, brands, "
                     "categories or second-order groups)", label)
            row = None
        elif kind == "content":
            order = np.random.default_rng([seed, epoch]).permutation(len(content))
            row = _epoch(steps, acc, opts["content"], content, collate, p["batch_content"], "content", reg, label, order)
        else:
            row = _epoch(steps, acc, opts["collab"], collab, collate, p["batch_collab"], "collab", True, label)
        if row is not None:
            row = {"epoch": epoch, "kind": kind, **row}
            log.info("%s", row)
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


def finetune(paths: StagePaths, settings: dict, fingerprint: str, threads: int | None = None) -> None:
    """Recommendation fine-tuning with validation, early stopping and resumable state."""
    seed, m, f = settings["seed"], settings["model"], settings["finetune"]
    acc, data, index, tokenizer = _setup(paths, settings, threads)
    model = EdgeAwareRecModel.load(paths.pretrained, attn_implementation=m["attn_implementation"],
                                   gradient_checkpointing=bool(m.get("gradient_checkpointing", False)))
    # Content tables are regularization targets only (docs/method.md 6.3).
    for side_table in ("content_user", "content_item"):
        model.tables[side_table].weight.requires_grad_(False)
    max_len = max_length(model, m)
    ev = model.entity_vocab
    collate = EdgeAwareCollator(ev, index, model.edge_bias, pad_token_id(tokenizer))
    opt = make_optimizer(model.side_parameters("collab"), f["lr"], f.get("weight_decay", 0.0))
    ckpt = Checkpoint(paths.ckpt, fingerprint)
    state = _resume(ckpt, model, {"rec": opt}, "finetune")
    acc.wait_for_everyone()
    scorer = Scorer(model, tokenizer, data, index, max_len, settings["evaluate"]["batch_size"])
    steps = acc.prepare(_Steps(model))
    opt = acc.prepare(opt)
    per_epoch = math.ceil(sum(len(t) > 0 for t in data.train_items) / f["batch_size"])
    lr_at = lr_schedule(f["lr"], per_epoch * f["epochs"], f.get("warmup_steps", 0), f.get("lr_decay", "constant"))
    for epoch in range(state.epoch + 1, f["epochs"]):
        if state.bad_epochs >= f["patience"]:
            break
        examples = build_finetune_examples(data.train_items, tokenizer, ev, max_len, seed, epoch,
                                           f.get("hide_frac", 0.2))
        row = _epoch(steps, acc, opt, examples, collate, f["batch_size"], "finetune", False,
                     f"finetune epoch {epoch}", lr_at=lr_at, first_step=epoch * per_epoch)
        val = evaluate_split(scorer, data, "val", acc)["metrics"]
        score = selection_score(val)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
        row = {"epoch": epoch, **row, **{f"val_{k}": val[k] for k in METRIC_KEYS}, "val_score": score}
        log.info("%s", row)
        state.history.append(row)
        state.epoch = epoch
        if acc.is_main_process:
            ckpt.save(_unwrap(acc, steps).model, {"rec": _unwrap_opt(opt)}, state, improved)
        acc.wait_for_everyone()
    if acc.is_main_process:
        model = _unwrap(acc, steps).model
        if ckpt.best_weights().is_file():
            model.load_weights(ckpt.best_weights())
        model.save(paths.out)
        pd.DataFrame(state.history).to_csv(paths.out / "history.csv", index=False)
        best = next(r for r in state.history if r["epoch"] == state.best_epoch)
        (paths.out / "best.json").write_text(json.dumps(
            {"epoch": state.best_epoch, "val": {k: best[f"val_{k}"] for k in METRIC_KEYS}}, indent=2) + "\n")
        ckpt.clear()
    acc.wait_for_everyone()
    acc.end_training()


def evaluate(paths: StagePaths, settings: dict, metrics_path: Path, recommendations_path: Path,
             per_user_path: Path | None = None, threads: int | None = None) -> dict:
    """Test metrics of the best fine-tuned weights; top-K lists with scores per user."""
    m, e = settings["model"], settings["evaluate"]
    acc, data, index, tokenizer = _setup(paths, settings, threads)
    model = EdgeAwareRecModel.load(paths.finetuned, attn_implementation=m["attn_implementation"]).to(acc.device)
    scorer = Scorer(model, tokenizer, data, index, max_length(model, m), e["batch_size"])
    res = evaluate_split(scorer, data, "test", acc, top_n=e["top_k"])
    best = json.loads((paths.finetuned / "best.json").read_text())
    out = {"test": res["metrics"], "val": {**best["val"]}, "epoch": best["epoch"]}
    if acc.is_main_process:
        metrics_path.write_text(json.dumps(out, indent=2) + "\n")
        res["top_k"].to_parquet(recommendations_path, index=False)
        if per_user_path is not None:
            res["per_user"].to_parquet(per_user_path, index=False)
    acc.wait_for_everyone()
    acc.end_training()
    return out


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
