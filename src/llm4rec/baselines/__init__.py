"""Baselines fitted on the train split only (docs/method.md 7.5), one module each: popularity,
ItemKNN, EASE, Multi-VAE. Every model exposes ``score(users) -> torch.Tensor [B, I]`` with raw
scores for all items; :class:`llm4rec.metrics.RankingEvaluator` masks train items and breaks
ties by item id. `runs` fits one by name as the `baseline` rule does."""
