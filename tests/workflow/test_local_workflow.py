"""A `local` dataset through the real workflow: ISO-8601 times kept, an empty rating filter named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import copy_checkout, snakemake

pytestmark = pytest.mark.slow


def test_local_iso_times_reach_the_processed_data_and_an_empty_rating_filter_is_named(tmp_path):
    work = copy_checkout(tmp_path / "work")
    rng = np.random.default_rng(0)
    seconds = 1_500_000_000 + rng.integers(10**7, size=600)
    reviews = pd.DataFrame(
        {
            "user_id": [f"u{k // 10}" for k in range(600)],
            "item_id": [f"i{v}" for v in rng.integers(30, size=600)],
            "rating": 5,
            "timestamp": [pd.Timestamp(s, unit="s", tz="UTC").isoformat() for s in seconds],
        }
    )
    data = work / "data"
    data.mkdir()
    reviews.to_csv(data / "reviews.csv", index=False)
    reviews.assign(rating=True).to_json(data / "implicit.jsonl", orient="records", lines=True)
    pd.DataFrame({"item_id": [f"i{k}" for k in range(30)]}).to_csv(data / "items.csv", index=False)
    config = {
        "dataset": "mine",
        "datasets": {
            "mine": {"source": "local", "reviews": "data/reviews.csv", "items": "data/items.csv"},
            "implicit": {"source": "local", "reviews": "data/implicit.jsonl", "items": "data/items.csv"},
        },
        "preprocess": {"user_core": 3, "item_core": 2},
    }
    (work / "mine.yaml").write_text(yaml.safe_dump(config))

    snakemake(work, "results/mine/processed/stats.json", "--cores", "1", "--configfile", "mine.yaml")
    got = pd.read_parquet(work / "results/mine/processed/interactions.parquet")
    assert got["timestamp"].notna().all() and set(got["timestamp"]) <= set(seconds.tolist())

    proc = snakemake(
        work, "results/implicit/processed/stats.json", "--cores", "1", "--configfile", "mine.yaml", check=False
    )
    assert proc.returncode != 0
    log = Path(work / "logs/implicit/preprocess.log").read_text()
    assert "the rating filter kept nothing" in log and "set preprocess.min_rating: 0" in log
    assert "core" not in log.splitlines()[-1]
