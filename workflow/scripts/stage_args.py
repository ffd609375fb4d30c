"""Command-line arguments shared by the training-stage scripts (run by `accelerate launch`)."""

import argparse
import json
import logging
from pathlib import Path


def parse(extra: dict[str, dict]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processed", type=Path, required=True)
    ap.add_argument("--graph", type=Path, required=True)
    ap.add_argument("--tokenizer", default="none")
    ap.add_argument("--settings", type=json.loads, required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--threads", type=int, default=None)
    for name, kw in extra.items():
        ap.add_argument(name, **kw)
    args = ap.parse_args()
    args.tokenizer = None if args.tokenizer == "none" else Path(args.tokenizer)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args
