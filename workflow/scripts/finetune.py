"""Fine-tuning stage (run by `accelerate launch` from the `finetune` rule)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stage_args import parse  # noqa: E402

from llm4rec.checkpoint import fingerprint  # noqa: E402
from llm4rec.training import StagePaths, finetune  # noqa: E402

args = parse({"--pretrained": {"type": Path, "required": True}, "--out": {"type": Path, "required": True},
              "--ckpt": {"type": Path, "required": True}})
inputs = [args.processed, args.graph, args.pretrained] + ([args.tokenizer] if args.tokenizer else [])
paths = StagePaths(processed=args.processed, graph=args.graph, tokenizer=args.tokenizer, out=args.out,
                   ckpt=args.ckpt, pretrained=args.pretrained)
finetune(paths, args.settings, fingerprint(args.settings, args.version, inputs), args.threads)
