"""Forward+backward throughput of the `tiny` backbone with the edge-aware mask, eager vs SDPA.

One collaborative training step (`EdgeAwareRecModel.collab_step`, loss + regularization,
backward) on a fixed batch of B prompts padded to about L tokens with the `seed` mask;
tokens/s counts real (non-padding) tokens. Both attention implementations share weights.

    .venv/bin/python bench/bench_backbone.py
    .venv/bin/python bench/bench_backbone.py --n-layer 4 --n-embd 128 --n-head 4 --batch 16 --items 100 --steps 10
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llm4rec.collate import EdgeAwareCollator  # noqa: E402
from llm4rec.graph import RelationIndex  # noqa: E402
from llm4rec.model import EdgeAwareRecModel, build_tiny_backbone  # noqa: E402
from llm4rec.prompts import build_collab_examples  # noqa: E402
from llm4rec.tokenization import EntityVocab, load_tokenizer, train_bpe_tokenizer  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_bias import power_law_graph  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-positions", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--items", type=int, default=100, help="train items per user (sequence length ~ items + 5)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    n_users, n_items = 2000, 3000
    m = power_law_graph(n_users, n_items, 30000)
    index = RelationIndex(m, max_hops=5)
    train = [np.sort(rng.choice(n_items, size=args.items, replace=False)) for _ in range(args.batch)]
    with tempfile.TemporaryDirectory() as d:
        train_bpe_tokenizer(iter(["user has interacted with, will interact with"] * 20), d, vocab_size=300, min_frequency=1)
        tok = load_tokenizer(d)

    results = []
    state = None
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        backbone = build_tiny_backbone(
            args.vocab, args.n_layer, args.n_embd, args.n_head, args.n_positions, attn_implementation=attn
        )
        model = EdgeAwareRecModel(backbone, n_users, n_items)
        if state is None:
            state = model.state_dict()
        else:
            model.load_state_dict(state)
        model.train()
        ev = EntityVocab(model.vocab, n_users, n_items)
        ex = build_collab_examples(train, tok, ev, args.n_positions)
        batch = EdgeAwareCollator(ev, index, "seed")([ex[n] for n in range(len(ex))])
        n_tokens = int(batch["lengths"].sum())
        opt = torch.optim.Adam(model.side_parameters("collab"), lr=1e-3)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss, reg = model.collab_step(batch)
            (loss + reg).backward()
            opt.step()
            return float(loss.detach())

        step()  # warm-up
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        results.append({"attn": attn, "step_median_s": med, "tokens_per_s": n_tokens / med, "tokens": n_tokens,
                        "shape": list(batch["input_ids"].shape)})
    print(json.dumps({
        "machine": f"{platform.machine()} torch {torch.__version__}, threads={args.threads}",
        "config": vars(args),
        "results": results,
        "sdpa_over_eager": results[1]["tokens_per_s"] / results[0]["tokens_per_s"],
    }, indent=2))


if __name__ == "__main__":
    main()
