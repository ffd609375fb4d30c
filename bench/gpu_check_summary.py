"""The Python half of bench/gpu_check.sh: its config, and what each run measured.

config   write WORK/gpu_check.yaml (configs/smollm2.yaml on Beauty with titles, or a seeded
         subsample of GPU_CHECK_USERS users; GPU_CHECK_LAYERS, GPU_CHECK_FINETUNE_EPOCHS)
collect  copy a run's metrics, histories and job benchmarks to OUT/<precision>/ and count the
         tokens each training epoch processed (the library's own prompt builders), hence tokens/s
report   one table over the precisions run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = ROOT.parent / "shared" / "data" / "beauty"
DATASET = "beauty_gpu"
RUN = f"results/{DATASET}/full-s0"


def write_config(work: Path) -> None:
    import torch

    cfg = yaml.safe_load((ROOT / "configs" / "smollm2.yaml").read_text())
    users = int(os.environ.get("GPU_CHECK_USERS") or 0)
    spec = {
        "source": "local",
        "reviews": str(BEAUTY / "reviews.csv.gz"),
        "items": str(BEAUTY / "items_titles.jsonl.gz"),
    }
    if users:
        data = work / DATASET
        data.mkdir(exist_ok=True)
        reviews = pd.read_csv(BEAUTY / "reviews.csv.gz")
        pick = np.random.default_rng(0).choice(np.sort(reviews["user_id"].unique()), size=users, replace=False)
        reviews = reviews[reviews["user_id"].isin(pick)]
        reviews.to_csv(data / "reviews.csv", index=False)
        items = pd.read_json(BEAUTY / "items_titles.jsonl.gz", lines=True)
        items[items["item_id"].isin(reviews["item_id"])].to_json(data / "items.jsonl", orient="records", lines=True)
        spec = {"source": "local", "reviews": str(data / "reviews.csv"), "items": str(data / "items.jsonl")}
        cfg["preprocess"] = {"item_core": 1}  # a subsample of users leaves most items below 5
    cfg["dataset"], cfg["datasets"] = DATASET, {DATASET: spec}
    if os.environ.get("GPU_CHECK_LAYERS"):
        cfg["model"]["backbone_layers"] = int(os.environ["GPU_CHECK_LAYERS"])
    epochs = int(os.environ.get("GPU_CHECK_FINETUNE_EPOCHS") or 2)
    cfg["finetune"].update(epochs=epochs, patience=epochs)
    gpu = torch.cuda.is_available()
    cfg["evaluate"] = {"batch_size": 512 if gpu else 128, "top_k": 100}
    cfg["resources"] = {"train_gpus": 1 if gpu else 0, "train_threads": os.cpu_count() or 1}
    cfg["baselines"] = {"run": ["popularity"]}
    (work / "gpu_check.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"gpu_check: {'GPU ' + torch.cuda.get_device_name(0) if gpu else 'CPU'}; config {work / 'gpu_check.yaml'}")


def token_counts(work: Path) -> dict:
    """Tokens of one content epoch, one collaborative epoch and each fine-tuning epoch, built by
    the stages' own code from the run's data and the materialized backbone's tokenizer."""
    sys.path.insert(0, str(ROOT / "src"))
    from llm4rec.data.preprocess import load_processed
    from llm4rec.model.encoding import GRAPH_KINDS, Examples, build_collab_examples, build_finetune_examples
    from llm4rec.model.tokenization import EntityVocab, load_tokenizer
    from llm4rec.train.stage import FinetuneSettings

    cfg = yaml.safe_load((work / "gpu_check.yaml").read_text())
    saved = json.loads((work / RUN / "pretrain" / "rec_config.json").read_text())
    tok = load_tokenizer(work / saved["base_name"])  # the materialized backbone folder
    backbone_cfg = json.loads((work / RUN / "pretrain" / "backbone" / "config.json").read_text())
    vocab = int(backbone_cfg["vocab_size"])
    max_len = min(int(backbone_cfg["max_position_embeddings"]), int(cfg["model"]["max_length"]))
    data = load_processed(work / f"results/{DATASET}/processed")
    ev = EntityVocab(vocab, data.n_users, data.n_items)
    content = Examples.load(work / f"results/{DATASET}/encoded/content.npz")
    if not cfg["model"].get("second_order", True):
        content = content.subset(np.flatnonzero(~np.isin(content.kind, sorted(GRAPH_KINDS))))
    ft = cfg["finetune"]
    return {
        "content": int(content.lengths().sum()),
        "collab": int(build_collab_examples(data.train_items, tok, ev, max_len, 0).lengths().sum()),
        "finetune": [
            int(
                build_finetune_examples(data.train_items, tok, ev, max_len, 0, e, FinetuneSettings(**ft).hide_frac)
                .lengths()
                .sum()
            )
            for e in range(ft["epochs"])
        ],
    }


def peak_gpu_mib(path: Path) -> float | None:
    if not path.is_file() or not path.read_text().strip():
        return None
    return float(max(float(x) for x in path.read_text().split()))


def collect(work: Path, out: Path, wall: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in ("metrics.json", "pretrain/history.csv", "finetune/history.csv"):
        shutil.copy(work / RUN / f, out / f.replace("/", "_"))
    bench = {}
    for stage in ("pretrain", "finetune", "evaluate"):
        tsv = work / f"benchmarks/{DATASET}/full-s0/{stage}.tsv"
        shutil.copy(tsv, out / f"{stage}.tsv")
        row = pd.read_csv(tsv, sep="\t").iloc[0]
        bench[stage] = {"seconds": float(row["s"]), "max_rss_mb": float(row["max_rss"])}
    tokens = token_counts(work)
    pre = pd.read_csv(out / "pretrain_history.csv")
    fine = pd.read_csv(out / "finetune_history.csv")
    speed = {}
    for kind in ("content", "collab"):
        rows = pre[pre["kind"] == kind]
        if len(rows):
            speed[kind] = tokens[kind] * len(rows) / float(rows["seconds"].sum())
    ran = [int(e) for e in fine["epoch"]]
    speed["finetune"] = sum(tokens["finetune"][e] for e in ran) / float(fine["seconds"].sum())
    gpu = peak_gpu_mib(out.parent / f"gpu_memory_{out.name}.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    summary = {
        "precision": out.name,
        "wall_s": wall,
        "tokens_per_s": speed,
        "tokens": tokens,
        "stages": bench,
        "peak_gpu_memory_mib": gpu,
        "test": metrics["test"],
        "best_epoch": metrics["epoch"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def report(out: Path, precisions: list[str]) -> None:
    rows = [json.loads((out / p / "summary.json").read_text()) for p in precisions]
    print(
        "\n| mixed precision | content tok/s | collab tok/s | finetune tok/s | peak GPU MiB | peak RSS MB "
        "| pretrain s | finetune s | evaluate s | test Recall@20 | Recall@40 | NDCG@100 | users |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        s, t = r["tokens_per_s"], r["test"]
        rss = max(v["max_rss_mb"] for v in r["stages"].values())
        gpu = f"{r['peak_gpu_memory_mib']:.0f}" if r["peak_gpu_memory_mib"] is not None else "-"
        print(
            f"| {r['precision']} | {s.get('content', float('nan')):.0f} | {s.get('collab', float('nan')):.0f} | "
            f"{s['finetune']:.0f} | {gpu} | {rss:.0f} | {r['stages']['pretrain']['seconds']:.0f} | "
            f"{r['stages']['finetune']['seconds']:.0f} | {r['stages']['evaluate']['seconds']:.0f} | "
            f"{t['Recall@20']:.4f} | {t['Recall@40']:.4f} | {t['NDCG@100']:.4f} | {t['users']} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["config", "collect", "report"])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--wall", type=int, default=0)
    ap.add_argument("--precisions", nargs="*", default=["no", "bf16"])
    args = ap.parse_args()
    if args.command == "config":
        write_config(args.work)
    elif args.command == "collect":
        collect(args.work, args.out, args.wall)
    else:
        report(args.out, args.precisions)


if __name__ == "__main__":
    main()
