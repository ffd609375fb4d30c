"""Pre-training stage (run by `accelerate launch` from the `pretrain` rule)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stage_args import parse  # noqa: E402

from llm4rec.checkpoint import fingerprint  # noqa: E402
from llm4rec.training import StagePaths, pretrain  # noqa: E402

args = parse({"--content": {"type": Path, "required": True}, "--out": {"type": Path, "required": True},
              "--ckpt": {"type": Path, "required": True}})
inputs = [args.processed, args.graph, args.content] + ([args.tokenizer] if args.tokenizer else [])
paths = StagePaths(processed=args.processed, graph=args.graph, tokenizer=args.tokenizer, out=args.out,
                   ckpt=args.ckpt, content=args.content)
pretrain(paths, args.settings, fingerprint(args.settings, args.version, inputs), args.threads)
