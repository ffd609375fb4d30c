"""What the training and evaluation stages share: a run's typed settings, its paths, the
command line, and what every stage starts from (accelerator, processed data, relation index,
tokenizer).

A run is one variant and one seed (`results/{dataset}/{variant}-s{seed}/`). Its rules pass
the settings a stage reads as one JSON object (`run_settings` in workflow/rules/common.smk:
the seeds, `model` and the stage's own blocks, so that a fine-tuning setting does not rerun
pre-training); a stage reads it once into `RunSettings` and hands the typed blocks on. The
checkpoint fingerprint hashes the raw object, not the dataclasses, so the defaults filled in
here never change it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm4rec.core.locking import exclusive
from llm4rec.data.preprocess import Processed, load_processed
from llm4rec.graph.relation import RelationIndex
from llm4rec.model.settings import ModelSettings
from llm4rec.model.tokenization import backbone_tokenizer

log = logging.getLogger("llm4rec.train.stage")


@dataclass(frozen=True)
class PretrainSettings:
    """The `pretrain` block (docs/method.md 6.2)."""

    content_epochs: int
    collab_epochs: int
    content_every: int  # a content epoch after every N-th collaborative one (0: never)
    lr: float
    batch_content: int
    batch_collab: int
    weight_decay: float = 0.0  # > 0: AdamW's decoupled decay instead of Adam


@dataclass(frozen=True)
class FinetuneSettings:
    """The `finetune` block (docs/method.md 6.3)."""

    epochs: int
    lr: float
    batch_size: int
    patience: int
    hide_frac: float = 0.2
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "constant"  # or "cosine"
    shared_users: bool = False
    untied_head: bool = False
    min_steps: int = 0

    def stretched(self, steps_per_epoch: int) -> tuple[int, int]:
        """`epochs` and `patience`, both stretched by the factor that takes `epochs` of
        `steps_per_epoch` optimizer steps to `min_steps` where they fall short: a small data
        set gets the schedule's steps, and as many of them to improve (docs/method.md 6.5)."""
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        return epochs, math.ceil(self.patience * epochs / self.epochs)


@dataclass(frozen=True)
class EvaluateSettings:
    """The `evaluate` block (docs/method.md 7.4)."""

    batch_size: int
    top_k: int


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run's stages, as the rules pass them: a block a stage does not read
    (pre-training's `finetune` and `evaluate`, evaluation's `pretrain` and `finetune`) may be
    absent (None)."""

    seed: int
    model: ModelSettings
    pretrain: PretrainSettings | None = None
    finetune: FinetuneSettings | None = None
    evaluate: EvaluateSettings | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSettings:
        def block(kind: type, key: str) -> Any:
            return kind(**d[key]) if key in d else None

        return cls(
            seed=int(d["seed"]),
            model=ModelSettings.from_dict(d["model"]),
            pretrain=block(PretrainSettings, "pretrain"),
            finetune=block(FinetuneSettings, "finetune"),
            evaluate=block(EvaluateSettings, "evaluate"),
        )


@dataclass
class StagePaths:
    """A stage's input and output paths, as its rule passes them (None: not this stage's)."""

    processed: Path
    graph: Path | None
    tokenizer: Path | None
    out: Path | None = None  # the stage's output folder (pre-training, fine-tuning)
    ckpt: Path | None = None  # its checkpoint folder
    content: Path | None = None  # encoded content examples
    pretrained: Path | None = None  # pretrain output (fine-tuning)
    finetuned: Path | None = None  # finetune output (evaluation)


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
    log.info(
        "accelerate: %s processes of type %s (process %d), device %s, mixed precision %s",
        acc.num_processes,
        acc.distributed_type,
        acc.process_index,
        acc.device,
        acc.mixed_precision,
    )
    return acc


def load_index(settings: ModelSettings, graph_dir: str | Path | None) -> RelationIndex | None:
    """The relation index, unless the variant uses no bias at all."""
    if settings.edge_bias == "none" or graph_dir is None:
        return None
    return RelationIndex.load(graph_dir)


def start(paths: StagePaths, settings: RunSettings, threads: int | None):
    """What every stage starts from: accelerator, processed data, relation index, tokenizer."""
    m = settings.model
    acc = make_accelerator(settings.seed, threads)
    data: Processed = load_processed(paths.processed)
    return acc, data, load_index(m, paths.graph), backbone_tokenizer(m.backbone, paths.tokenizer)


@contextlib.contextmanager
def stage_lock(run_dir: Path, stage: str) -> Iterator[None]:
    """Hold ``{run_dir}/{stage}.lock`` while the stage runs (`locking.exclusive`), so that a
    second run of the same stage, which Snakemake's locks may let through, stops at once
    instead of writing the same checkpoint and outputs. Only the first process of a launch
    (rank 0) takes it: the others of the same launch are not a second run."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with exclusive(Path(run_dir) / f"{stage}.lock", f"the {stage} stage of {run_dir}"):
        yield


def parse_args(
    prog: str, stages: Mapping[str, Mapping[str, Mapping[str, Any]]], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """`python -m llm4rec.<prog> STAGE --processed ... --settings JSON ...`: the options every
    stage takes plus each stage's own (`stages[name]`: option -> `add_argument` keywords).

    `--settings` stays the parsed JSON object (the fingerprint hashes it); `--tokenizer none`
    means no tokenizer (a pre-trained backbone brings its own).
    """
    ap = argparse.ArgumentParser(prog=f"python -m llm4rec.{prog}")
    sub = ap.add_subparsers(dest="stage", required=True)
    for name, extra in stages.items():
        sp = sub.add_parser(name)
        sp.add_argument("--processed", type=Path, required=True)
        sp.add_argument("--graph", type=Path, required=True)
        sp.add_argument("--tokenizer", default="none")
        sp.add_argument("--settings", type=json.loads, required=True)
        sp.add_argument("--version", required=True)
        sp.add_argument("--threads", type=int, default=None)
        for option, kw in extra.items():
            sp.add_argument(option, **kw)
    args = ap.parse_args(argv)
    args.tokenizer = None if args.tokenizer == "none" else Path(args.tokenizer)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args
