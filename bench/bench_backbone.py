"""Forward+backward throughput of the backbone with the edge-aware mask.

One collaborative training step (`EdgeAwareRecModel.collab_step`, loss + regularization,
backward, Adam) on a fixed batch of B prompts padded to about L tokens with the `seed` mask;
tokens/s counts real (non-padding) tokens.

Default: the `tiny` backbone, eager vs SDPA (both share weights). `--precision`: SDPA, the
`tiny` backbone and a GPT-2-sized random model (124M: 12 layers, 768 wide, 12 heads, the
GPT-2 vocabulary), each with float32 weights, bfloat16 weights (`model.dtype: bfloat16`)
and float32 weights under bfloat16 autocast (`launch.mixed_precision: bf16`).

    .venv/bin/python bench/bench_backbone.py
    .venv/bin/python bench/bench_backbone.py --n-layer 4 --n-embd 128 --n-head 4 --batch 16 --items 100 --steps 10
    .venv/bin/python bench/bench_backbone.py --precision --batch 8 --items 50 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
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

from llm4rec.graph.relation import RelationIndex  # noqa: E402
from llm4rec.model.backbone import build_tiny_backbone  # noqa: E402
from llm4rec.model.collate import EdgeAwareCollator  # noqa: E402
from llm4rec.model.edge_model import EdgeAwareRecModel  # noqa: E402
from llm4rec.model.encoding import build_collab_examples  # noqa: E402
from llm4rec.model.tokenization import EntityVocab, load_tokenizer, train_bpe_tokenizer  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_bias import power_law_graph  # noqa: E402

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab": 50257}
PRECISIONS = ("float32", "bfloat16", "bf16-autocast")


def time_steps(model: EdgeAwareRecModel, batch: dict, steps: int, autocast: bool) -> dict:
    """Median seconds of one collaborative training step (after one warm-up step)."""
    opt = torch.optim.Adam(model.side_parameters("collab"), lr=1e-3)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            loss, reg = model.collab_step(batch)
        (loss + reg).backward()
        opt.step()
        return float(loss.detach())

    losses = [step()]  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    n_tokens = int(batch["lengths"].sum())
    med = float(np.median(times))
    return {
        "step_median_s": med,
        "tokens_per_s": n_tokens / med,
        "tokens": n_tokens,
        "shape": list(batch["input_ids"].shape),
        "first_loss": losses[0],
    }


def precision_table(args, index, train, tok, n_users: int, n_items: int) -> list[dict]:
    """tiny and GPT-2-small, float32 vs bfloat16 weights vs bf16 autocast (SDPA)."""
    shapes = {
        "tiny": {
            "n_layer": args.n_layer,
            "n_embd": args.n_embd,
            "n_head": args.n_head,
            "n_positions": args.n_positions,
            "vocab": args.vocab,
        },
        "gpt2-124M": GPT2_SMALL,
    }
    rows = []
    for name, g in shapes.items():
        for precision in PRECISIONS:
            torch.manual_seed(0)
            dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
            backbone = build_tiny_backbone(
                g["vocab"],
                g["n_layer"],
                g["n_embd"],
                g["n_head"],
                g["n_positions"],
                attn_implementation="sdpa",
                dtype=dtype,
            )
            model = EdgeAwareRecModel(backbone, n_users, n_items).train()
            ev = EntityVocab(model.vocab, n_users, n_items)
            ex = build_collab_examples(train, tok, ev, g["n_positions"])
            batch = EdgeAwareCollator(ev, index, "seed")([ex[n] for n in range(len(ex))])
            params = sum(p.numel() for p in model.backbone.parameters())
            res = time_steps(model, batch, args.steps, autocast=precision == "bf16-autocast")
            rows.append({"backbone": name, "backbone_params": params, "precision": precision, **res})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            del model, backbone
    return rows


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
    ap.add_argument("--precision", action="store_true", help="tiny and GPT-2-small, float32 vs bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    n_users, n_items = 2000, 3000
    m = power_law_graph(n_users, n_items, 30000)
    index = RelationIndex(m, max_hops=5)
    train = [np.sort(rng.choice(n_items, size=args.items, replace=False)) for _ in range(args.batch)]
    with tempfile.TemporaryDirectory() as d:
        train_bpe_tokenizer(
            iter(["user has interacted with, will interact with"] * 20), d, vocab_size=300, min_frequency=1
        )
        tok = load_tokenizer(d)
    machine = f"{platform.machine()} torch {torch.__version__}, threads={args.threads}"
    if args.precision:
        rows = precision_table(args, index, train, tok, n_users, n_items)
        base = {r["backbone"]: r["tokens_per_s"] for r in rows if r["precision"] == "float32"}
        for r in rows:
            r["speed_vs_float32"] = r["tokens_per_s"] / base[r["backbone"]]
        print(json.dumps({"machine": machine, "config": vars(args), "results": rows}, indent=2))
        return

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
        results.append({"attn": attn, **time_steps(model, batch, args.steps, autocast=False)})
    print(
        json.dumps(
            {
                "machine": machine,
                "config": vars(args),
                "results": results,
                "sdpa_over_eager": results[1]["tokens_per_s"] / results[0]["tokens_per_s"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
