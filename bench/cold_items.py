"""Items without train interactions, scored from their content vector (docs/method.md 5.7).

For a fine-tuned run, the validation and test metrics as trained, and again with the
collaborative row of every item that has no train interaction (but has content) replaced by
its content row: the mean of the Gaussian prior the mutual regularization stands for, which is
what the regularizer would leave such an item if it ever reached it. Also how many of the
split's pairs are such items and how many of them a top 20 finds. Evaluation only, no
training: the question is whether the substitution is worth making a setting.

    .venv/bin/python bench/cold_items.py --dataset-dir /tmp/lp/w/results/sub1000_tinyc3e40 \
        --run full-s0 [--backbone tiny]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from llm4rec.data.preprocess import load_processed
from llm4rec.graph.relation import RelationIndex
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.settings import context_length
from llm4rec.model.tokenization import backbone_tokenizer
from llm4rec.train.evaluate import Scorer, evaluate_split
from llm4rec.train.stage import make_accelerator


def cold_hits(top, target_csr, cold: np.ndarray, k: int = 20) -> tuple[int, int]:
    """(target pairs on cold items, of them found in the top k)."""
    t = target_csr.tocoo()
    on_cold = cold[t.col]
    pairs = set(zip(t.row[on_cold].tolist(), t.col[on_cold].tolist()))
    shown = top[top["rank"] < k]
    found = sum((u, i) in pairs for u, i in zip(shown["uid"].to_numpy(), shown["iid"].to_numpy()))
    return len(pairs), int(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset-dir", type=Path, required=True, help="results/{dataset}")
    ap.add_argument("--run", required=True, help="run folder under it, e.g. full-s0")
    ap.add_argument("--backbone", default="tiny", help="tiny, or the materialized backbone folder")
    ap.add_argument("--max-length", type=int, default=None, help="the run's model.max_length (smollm2.yaml: 256)")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    d = args.dataset_dir
    data = load_processed(d / "processed")
    model = EdgeAwareRecModel.load(d / args.run / "finetune")
    tokenizer = backbone_tokenizer(args.backbone, d / "tokenizer" if args.backbone == "tiny" else None)
    index = RelationIndex.load(d / "graph" / "relation") if model.edge_bias != "none" else None
    acc = make_accelerator(0, threads=1)
    max_len = context_length(model.lm.config, args.max_length)
    n_train = np.asarray(data.matrices["train"].sum(axis=0)).ravel()
    has_content = model.has_content[model.n_users :].cpu().numpy()
    cold = n_train == 0
    swap = cold & has_content
    out = {"items": int(len(cold)), "cold": int(cold.sum()), "cold_with_content": int(swap.sum())}
    collab = model.tables["collab_item"].weight.detach().float().clone()
    content = model.tables["content_item"].weight.detach().float().clone()
    warm = torch.from_numpy(~cold & has_content)
    rows = torch.from_numpy(np.flatnonzero(swap))
    out["norm collab (warm)"] = round(float(collab[warm].norm(dim=1).mean()), 3)
    out["norm content (warm)"] = round(float(content[warm].norm(dim=1).mean()), 3)
    out["norm collab (cold)"] = round(float(collab[rows].norm(dim=1).mean()), 3)
    for label in ("as trained", "cold from content", "cold from content, mapped"):
        with torch.no_grad():
            if label == "cold from content":
                model.tables["collab_item"].weight[rows] = content[rows].to(model.tables["collab_item"].weight.dtype)
            elif label == "cold from content, mapped":
                # Ridge map content -> collab fitted on the warm items, applied to the cold ones.
                x, y = content[warm], collab[warm]
                w = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1]), x.T @ y)
                model.tables["collab_item"].weight[rows] = (content[rows] @ w).to(
                    model.tables["collab_item"].weight.dtype
                )
        scorer = Scorer(model, tokenizer, data, index, max_len, args.batch_size)
        for split in ("val", "test"):
            res = evaluate_split(scorer, data, split, acc, top_n=20)
            pairs, found = cold_hits(res["top_k"], data.matrices[split], cold)
            m = res["metrics"]
            out[f"{label}/{split}"] = {
                **{k: round(m[k], 4) for k in ("Recall@20", "Recall@40", "NDCG@100")},
                "score": round(m["Recall@20"] + m["Recall@40"] + m["NDCG@100"], 4),
                "cold pairs": pairs,
                "cold found in top 20": found,
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
