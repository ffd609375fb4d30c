"""Test evaluation (run by `accelerate launch` from the `evaluate` rule)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stage_args import parse  # noqa: E402

from llm4rec.training import StagePaths, evaluate  # noqa: E402

args = parse({"--finetuned": {"type": Path, "required": True}, "--metrics": {"type": Path, "required": True},
              "--recommendations": {"type": Path, "required": True}, "--per-user": {"type": Path, "default": None}})
paths = StagePaths(processed=args.processed, graph=args.graph, tokenizer=args.tokenizer, out=args.metrics.parent,
                   ckpt=args.metrics.parent / "evaluate.ckpt", finetuned=args.finetuned)
evaluate(paths, args.settings, args.metrics, args.recommendations, args.per_user, args.threads)
