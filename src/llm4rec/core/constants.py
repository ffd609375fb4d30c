"""Names and values shared by several stages, in one torch-free home, so that the Snakefile,
the report jobs and the data stages can import them without loading torch."""

from __future__ import annotations

import numpy as np

DEFAULT_KS_RECALL: tuple[int, ...] = (20, 40)
DEFAULT_KS_NDCG: tuple[int, ...] = (100,)
# The metrics every run and baseline reports, named as `RankingEvaluator` names its defaults.
METRICS: tuple[str, ...] = (*(f"Recall@{k}" for k in DEFAULT_KS_RECALL), *(f"NDCG@{k}" for k in DEFAULT_KS_NDCG))

# The additive mask the model takes (from the collator) is float32, blocked entries at this
# (the value of torch.finfo(torch.float32).min).
MASK_MIN: float = float(np.finfo(np.float32).min)

# Label of a position that is not a target (PyTorch's cross-entropy `ignore_index`).
IGNORE_INDEX: int = -100
