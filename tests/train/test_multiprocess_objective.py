"""The pre-training and fine-tuning objective does not depend on the process count.

One optimizer step's gradient with 1 process equals the gradient with 2 real CPU processes
(`workflow/scripts/launch.sh`: `accelerate launch --multi_gpu`, gloo) to 1e-5 relative L2,
for content, collaborative and fine-tuning steps over uneven examples: the 4 collaborative
examples have 1, 1, 10 and 10 target items, so the two processes' shares hold 2 and 20
targets (a per-process token mean weighted by examples was 129% off).

This file is also the 2-process worker: `accelerate launch tests/train/test_multiprocess_objective.py`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
N_USERS, N_ITEMS = 5, 12
TRAIN = [np.array([0]), np.array([1]), np.arange(10), np.arange(2, 12), np.array([3, 4, 5])]
STEPS = ("content", "collab", "finetune")


def examples(tok, ev, step: str) -> list[dict]:
    """A global batch of uneven examples for one step kind."""
    from llm4rec.model.encoding import build_collab_examples, build_content_examples, build_finetune_examples

    if step == "content":
        inter = pd.DataFrame(
            {
                "uid": [0, 1, 2, 3],
                "iid": [0, 1, 2, 3],
                "split": "train",
                "review_text": ["ok", "great", "a long review " * 12, "a longer review text " * 20],
            }
        )
        items = pd.DataFrame({"iid": np.arange(N_ITEMS)})
        ex = build_content_examples(items, inter, None, tok, ev, 256)
    elif step == "collab":
        ex = build_collab_examples(TRAIN[:4], tok, ev, 256)  # 1, 1, 10, 10 items
    else:
        ex = build_finetune_examples(TRAIN, tok, ev, 256, seed=0, epoch=0, hide_frac=0.2)  # 5 users: 3 + 2
    return [ex[n] for n in range(len(ex))]


def gradients(model_dir: Path, tok_dir: Path, micro_tokens: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """One `run_step` per step kind on this process's share; the (DDP-averaged) gradients."""
    import llm4rec.train.steps as training
    from llm4rec.model.collate import EdgeAwareCollator
    from llm4rec.model.edge_model import EdgeAwareRecModel
    from llm4rec.model.tokenization import load_tokenizer
    from llm4rec.train.stage import make_accelerator

    if micro_tokens is not None:
        training.MICRO_BATCH_TOKENS = micro_tokens
    acc = make_accelerator(0, threads=2)
    tok = load_tokenizer(tok_dir)
    model = EdgeAwareRecModel.load(model_dir, attn_implementation="sdpa")
    model.eval()  # no dropout: every process count sees the same function
    steps = acc.prepare(training.StepModule(model))
    opt = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.0))
    collate = EdgeAwareCollator(model.entity_vocab, None, "none")
    out = {}
    for step in STEPS:
        batch = examples(tok, model.entity_vocab, step)
        part, weight = training.local_share(np.arange(len(batch)), acc.num_processes, acc.process_index)
        trainer = training.Trainer(steps, acc, collate)
        training.run_step(trainer, opt, [batch[int(n)] for n in part], step, True, weight, step)
        out[step] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out


def _flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].flatten().double() for n in names])


@pytest.mark.slow
def test_gradient_equals_across_process_counts(tmp_path):
    from llm4rec.model.backbone import build_tiny_backbone
    from llm4rec.model.edge_model import EdgeAwareRecModel
    from llm4rec.model.tokenization import train_bpe_tokenizer

    tok = train_bpe_tokenizer(
        ["a long review text great ok", "has interacted with, will interact with"] * 20,
        tmp_path / "tok",
        vocab_size=300,
        min_frequency=1,
    )
    torch.manual_seed(0)
    model = EdgeAwareRecModel(
        build_tiny_backbone(len(tok), 2, 32, 2, 256, dropout=0.0), N_USERS, N_ITEMS, edge_bias="none"
    )
    model.save(tmp_path / "model")
    ev = model.entity_vocab
    counts = [len(x["input_ids"]) - x["prompt_len"] for x in examples(tok, ev, "collab")]
    assert counts == [1, 1, 10, 10]

    one = gradients(tmp_path / "model", tmp_path / "tok")
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "workflow/scripts/launch.sh"),
            "0",
            "2",
            __file__,
            "--model",
            str(tmp_path / "model"),
            "--tok",
            str(tmp_path / "tok"),
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "two" / "processes.txt").read_text() == "2 MULTI_CPU"
    for variant in ("whole", "micro"):
        for step in STEPS:
            two = load_file(tmp_path / "two" / f"{variant}-{step}.safetensors")
            assert two.keys() == one[step].keys(), step
            names = sorted(two)
            ref, got = _flat(one[step], names), _flat(two, names)
            rel = float((got - ref).norm() / ref.norm())
            assert rel < 1e-5, (variant, step, rel)


def main() -> None:
    from accelerate import PartialState

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--tok", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    # Whole shares, then one example per micro-batch (more backward passes on one process).
    for variant, micro in (("whole", None), ("micro", 1)):
        grads = gradients(args.model, args.tok, micro)
        state = PartialState()
        if state.is_main_process:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "processes.txt").write_text(f"{state.num_processes} {state.distributed_type.value}")
            for step, g in grads.items():
                save_file({k: v.contiguous() for k, v in g.items()}, str(args.out / f"{variant}-{step}.safetensors"))
    # As the stages do (`end_training`): a gloo group left to interpreter exit once aborted a
    # worker ("terminate called without an active exception") after its work was done.
    PartialState().destroy_process_group()


if __name__ == "__main__":
    main()
