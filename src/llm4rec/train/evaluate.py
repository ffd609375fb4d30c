"""Ranking evaluation of the model: the `evaluate` stage (test metrics of the best fine-tuned
weights, docs/method.md 7.4) and the validation fine-tuning selects epochs with.

Evaluation gives each process whole batches of users, so scores, and hence metrics, do not
depend on the number of processes. Started by the `evaluate` rule as
`accelerate launch -m llm4rec.train.evaluate evaluate ...`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llm4rec.core.constants import METRICS
from llm4rec.core.logs import readable
from llm4rec.data.preprocess import Processed, write_recommendations
from llm4rec.graph.relation import RelationIndex
from llm4rec.metrics import RankingEvaluator
from llm4rec.model.collate import MICRO_BATCH_TOKENS, EdgeAwareCollator, global_batches, micro_batches
from llm4rec.model.edge_model import EdgeAwareRecModel
from llm4rec.model.encoding import build_eval_examples
from llm4rec.model.settings import context_length
from llm4rec.model.tokenization import pad_token_id
from llm4rec.train.stage import RunSettings, StagePaths, parse_args, stage_lock, start

log = logging.getLogger("llm4rec.train.evaluate")


class Scorer:
    """Scores users from their evaluation prompts (all train items, ascending)."""

    def __init__(
        self,
        model: EdgeAwareRecModel,
        tokenizer,
        data: Processed,
        index: RelationIndex | None,
        max_len: int,
        batch_size: int,
    ) -> None:
        self.model = model
        self.examples = build_eval_examples(data.train_items, tokenizer, model.entity_vocab, max_len)
        self.collate = EdgeAwareCollator(model.entity_vocab, index, model.edge_bias, pad_token_id(tokenizer))
        self.batch_size = batch_size
        self.max_tokens = max(MICRO_BATCH_TOKENS, int(self.examples.lengths().max()))

    @torch.inference_mode()
    def __call__(self, uids: np.ndarray) -> torch.Tensor:
        """Scores `[len(uids), n_items]`, computed in length-sorted micro-batches (each
        user's scores depend only on its own prompt, not on its batch-mates' lengths).
        Inference mode: no autograd state at all, the cheapest way to run the backbone."""
        was_training = self.model.training
        self.model.eval()
        examples = [self.examples[int(u)] for u in uids]
        lengths = np.array([len(x["input_ids"]) for x in examples])
        scores = None
        for group in micro_batches(lengths, self.max_tokens):
            part = self.model.score(self.collate([examples[int(n)] for n in group])).float()
            if scores is None:
                scores = part.new_empty((len(uids), part.shape[1]))
            scores[torch.from_numpy(group).to(part.device)] = part
        self.model.train(was_training)
        return scores


def evaluate_split(scorer: Scorer, data: Processed, split: str, acc, top_n: int = 0) -> dict:
    """Metrics over users with targets in ``split``; identical for any process count."""
    from accelerate.utils import gather_object

    evaluator = RankingEvaluator(data.matrices["train"], data.matrices[split], batch_size=scorer.batch_size)
    users = evaluator.users
    batches = global_batches(len(users), scorer.batch_size)
    mine = [b for k, b in enumerate(batches) if k % acc.num_processes == acc.process_index]
    my_users = users[np.concatenate(mine)] if mine else users[:0]
    if len(my_users):
        local = RankingEvaluator(
            data.matrices["train"], data.matrices[split], batch_size=scorer.batch_size, users=my_users
        ).evaluate(scorer, top_n=top_n)
        per_user, top = local.per_user, local.top_k
    else:
        per_user, top = None, None
    parts = gather_object([(per_user, top)]) if acc.num_processes > 1 else [(per_user, top)]
    per_user = (
        pd.concat([p for p, _ in parts if p is not None]).sort_values("uid", kind="stable").reset_index(drop=True)
    )
    tops = [t for _, t in parts if t is not None]
    top = pd.concat(tops).sort_values(["uid", "rank"], kind="stable").reset_index(drop=True) if tops else None
    metrics = {k: float(per_user[k].to_numpy(np.float64).mean()) for k in METRICS}
    metrics["users"] = int(len(per_user))
    return {"metrics": metrics, "per_user": per_user, "top_k": top}


def evaluate(
    paths: StagePaths,
    settings: RunSettings,
    metrics_path: Path,
    recommendations_path: Path,
    per_user_path: Path | None = None,
    threads: int | None = None,
) -> dict:
    """Test metrics of the best fine-tuned weights; top-K lists with scores per user."""
    m, e = settings.model, settings.evaluate
    acc, data, index, tokenizer = start(paths, settings, threads)
    model = EdgeAwareRecModel.load(paths.finetuned, attn_implementation=m.attn_implementation).to(acc.device)
    scorer = Scorer(model, tokenizer, data, index, context_length(model.lm.config, m.max_length), e.batch_size)
    res = evaluate_split(scorer, data, "test", acc, top_n=e.top_k)
    best = json.loads((paths.finetuned / "best.json").read_text())
    out = {"test": res["metrics"], "val": {**best["val"]}, "epoch": best["epoch"]}
    log.info(
        "test (%d users, weights of fine-tuning epoch %d): %s",
        res["metrics"]["users"],
        best["epoch"],
        readable({k: res["metrics"][k] for k in METRICS}),
    )
    if acc.is_main_process:
        metrics_path.write_text(json.dumps(out, indent=2) + "\n")
        write_recommendations(res["top_k"], recommendations_path, paths.processed)
        if per_user_path is not None:
            res["per_user"].to_parquet(per_user_path, index=False)
    acc.wait_for_everyone()
    acc.end_training()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m llm4rec.train.evaluate evaluate ...`, as the `evaluate` rule runs it."""
    args = parse_args(
        "evaluation",
        {
            "evaluate": {
                "--finetuned": {"type": Path, "required": True},
                "--metrics": {"type": Path, "required": True},
                "--recommendations": {"type": Path, "required": True},
                "--per-user": {"type": Path, "default": None},
            }
        },
        argv,
    )
    paths = StagePaths(
        processed=args.processed,
        graph=args.graph,
        tokenizer=args.tokenizer,
        finetuned=args.finetuned,
    )
    with stage_lock(args.metrics.parent, "evaluate"):
        evaluate(
            paths, RunSettings.from_dict(args.settings), args.metrics, args.recommendations, args.per_user, args.threads
        )


if __name__ == "__main__":
    main()
