"""Quality attempts on real Amazon Beauty (issue 11): pre-training + fine-tuning with
settings merged over config.yaml + configs/beauty.yaml, outside Snakemake, so that many
attempts can share the dataset's processed tables, graph and encoded content.

    .venv/bin/snakemake --cores 2 --configfile configs/beauty.yaml --until encode relation_matrix
    .venv/bin/python bench/tune_beauty.py --name ft-lr1e-3 --set finetune.lr=0.001 \
        --set pretrain.collab_epochs=0 --set pretrain.content_epochs=0

Each attempt writes results/beauty/tune/{name}/ (pretrain/, finetune/ with history.csv and
best.json, settings.json); validation metrics only, never test.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import yaml

from llm4rec.train.loop import finetune, pretrain
from llm4rec.train.stage import RunSettings, StagePaths

REPO = Path(__file__).resolve().parents[1]


def merged_config(config_files: list[str], sets: list[str]) -> dict:
    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    cfg: dict = {}
    for f in config_files:
        cfg = merge(cfg, yaml.safe_load((REPO / f).read_text()))
    for s in sets:
        key, value = s.split("=", 1)
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    return cfg


def warn_settings_fixed_by_pretrained(pretrained: Path, model: dict) -> list[str]:
    """Log each model setting that differs from the reused pre-trained model's `rec_config.json`
    (and, for `tiny`, its `backbone/config.json`).

    Fine-tuning builds the model from those files, so such a `--set` changes nothing here (in
    the workflow the same setting reruns pre-training); returns the keys that differ."""
    stored = json.loads((pretrained / "rec_config.json").read_text())
    wanted = {k: v for k, v in model.items() if k in stored}
    backbone = pretrained / "backbone" / "config.json"
    if model.get("backbone") == "tiny" and backbone.is_file():
        arch = json.loads(backbone.read_text())
        stored |= {f"tiny.{k}": arch.get(k, v) for k, v in model["tiny"].items()}
        wanted |= {f"tiny.{k}": v for k, v in model["tiny"].items()}
    differ = sorted(k for k, v in wanted.items() if stored[k] != v)
    for key in differ:
        logging.warning(
            "model.%s = %r is ignored: fine-tuning takes %r from the pre-trained model in %s "
            "(remove it to pre-train with the new setting)",
            key,
            wanted[key],
            stored[key],
            pretrained,
        )
    return differ


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", action="append", default=["config.yaml", "configs/beauty.yaml"])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", default="full")
    args = ap.parse_args()
    cfg = merged_config(args.config, args.set)
    ds = cfg["dataset"]
    d = REPO / "results" / ds
    run = d / "tune" / args.name
    run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(run / "log.txt"), logging.StreamHandler()],
    )
    settings = {
        "seed": args.seed,
        "model": {**cfg["model"], **cfg["variants"][args.variant]},
        "pretrain": cfg["pretrain"],
        "finetune": cfg["finetune"],
        "evaluate": cfg["evaluate"],
        "data_seed": cfg["data_seed"],
    }
    (run / "settings.json").write_text(json.dumps(settings, indent=2))
    typed = RunSettings.from_dict(settings)
    common = dict(processed=d / "processed", graph=d / "graph" / "relation", tokenizer=d / "tokenizer")
    t0 = time.time()
    if (run / "pretrain" / "model.safetensors").is_file():
        warn_settings_fixed_by_pretrained(run / "pretrain", settings["model"])
    else:
        pretrain(
            StagePaths(
                **common, out=run / "pretrain", ckpt=run / "pretrain.ckpt", content=d / "encoded" / "content.npz"
            ),
            typed,
            "tune",
            args.threads,
        )
    t1 = time.time()
    finetune(
        StagePaths(**common, out=run / "finetune", ckpt=run / "finetune.ckpt", pretrained=run / "pretrain"),
        typed,
        "tune",
        args.threads,
    )
    t2 = time.time()
    best = json.loads((run / "finetune" / "best.json").read_text())
    summary = {
        "name": args.name,
        "sets": args.set,
        "pretrain_min": round((t1 - t0) / 60, 1),
        "finetune_min": round((t2 - t1) / 60, 1),
        **best,
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
