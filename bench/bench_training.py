"""Fine-tuning epoch time and evaluation throughput at Amazon-Beauty size (issue 5).

Generated data (`llm4rec.data.demo.beauty_sized`, through the real preprocess), the `tiny`
backbone at 2 layers, 128 wide, 4 heads, the real collator, fine-tuning step and evaluator.

    .venv/bin/python bench/bench_training.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llm4rec.data import demo
from llm4rec.data.preprocess import Processed
from llm4rec.graph.relation import build_relation_index
from llm4rec.model.backbone import build_tiny_backbone
from llm4rec.model.collate import EdgeAwareCollator
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.encoding import build_finetune_examples
from llm4rec.model.tokenization import pad_token_id, train_bpe_tokenizer
from llm4rec.train.evaluate import Scorer, evaluate_split
from llm4rec.train.stage import make_accelerator
from llm4rec.train.steps import EpochPlan, StepKind, StepModule, Trainer, run_epoch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--eval-batch", type=int, default=256)
    args = ap.parse_args()

    t0 = time.time()
    out = demo.processed_interactions(demo.beauty_sized(args.scale))
    inter, items = out["interactions"], out["items"]
    n_users, n_items = out["stats"]["users"], out["stats"]["items"]
    data = Processed(n_users, n_items, inter[["uid", "iid", "split"]])
    texts = [b for b in items["brand"].dropna()] + [", ".join(c) for c in items["categories"]]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_bpe_tokenizer(texts + ["has interacted with, will interact with"] * 10, Path(tmp), 2000)
    index = build_relation_index(inter, n_users, n_items)
    prep = time.time() - t0

    acc = make_accelerator(0, args.threads)
    model = EdgeAwareRecModel(build_tiny_backbone(len(tok), 2, 128, 4, 256), n_users, n_items, d6=index.d6)
    ev = model.entity_vocab
    collate = EdgeAwareCollator(ev, index, "seed", pad_token_id(tok))
    opt = torch.optim.Adam(model.side_parameters("collab"), lr=1e-4)
    t1 = time.time()
    examples = build_finetune_examples(data.train_items, tok, ev, 256, seed=0, epoch=0, hide_frac=0.2)
    build = time.time() - t1
    trainer = Trainer(StepModule(model), acc, collate)
    row = run_epoch(trainer, opt, EpochPlan(StepKind.FINETUNE, examples, 32, "finetune epoch 0"))
    scorer = Scorer(model, tok, data, index, 256, args.eval_batch)
    t2 = time.time()
    res = evaluate_split(scorer, data, "test", acc)
    eval_s = time.time() - t2
    print(
        json.dumps(
            {
                "users": n_users,
                "items": n_items,
                "train_edges": int((inter["split"] == "train").sum()),
                "threads": args.threads,
                "data_prep_s": round(prep, 1),
                "finetune_examples_s": round(build, 2),
                "finetune_epoch_s": round(row["seconds"], 1),
                "finetune_steps": int(np.ceil(len(examples) / 32)),
                "eval_users": res["metrics"]["users"],
                "eval_s": round(eval_s, 2),
                "eval_users_per_s": round(res["metrics"]["users"] / eval_s, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
