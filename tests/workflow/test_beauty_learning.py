"""Learning at real scale: `configs/beauty.yaml`'s settings, on real Amazon Beauty interactions
and product titles cut to a seeded random half of its users, beat popularity by a wide margin
on held-out users.

The main command (`snakemake --cores 2 --configfile configs/beauty.yaml` plus a file that points
the dataset at the subsample and keeps fine-tuning at 16 epochs) runs the default target:
pre-training, fine-tuning, test metrics of `full` and the baselines on the same split. A
change that breaks learning at scale (a loss, a schedule, the prompts) drops `full` to
popularity's level, which the demo's few hundred users can hide. Users are drawn across the
whole file: the file's first users are early, heavy users on whom popularity alone is strong
(BENCHMARKS.md).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, copy_checkout, snakemake

pytestmark = pytest.mark.slow

BEAUTY_DATA = REPO.parent / "shared" / "data" / "beauty"
USER_FRACTION = 0.5  # about 6,200 users x 4,000 items remain after the 5-core
SAMPLE_SEED = 0
# Measured: with the titles (configs/beauty.yaml, 5 + 2 pre-training epochs) 3.5x popularity on
# Recall@20 and 2.9x on NDCG@100, with the attribute file (configs/beauty_notext.yaml) 3.5x and
# 2.9x as well (3.4x and 2.8x with 3 + 1 epochs, 3.0x and 2.5x with 70% hidden over 8 epochs); a
# model that stops learning falls to about 1x.
MARGIN = 2.0


def _subsample(work: Path, items_file: str) -> dict:
    """A seeded random USER_FRACTION of the users, all their interactions and their items from
    `items_file` (what the config reads), in the files' own formats (the workflow's 5-core then
    trims the rest)."""
    reviews = pd.read_csv(BEAUTY_DATA / "reviews.csv.gz", dtype={"user_id": str, "item_id": str})
    users = reviews["user_id"].drop_duplicates().to_numpy()
    rng = np.random.default_rng(SAMPLE_SEED)
    keep = rng.choice(users, int(USER_FRACTION * len(users)), replace=False)
    part = reviews[reviews["user_id"].isin(keep)]
    part.to_csv(work / "beauty_sub_reviews.csv.gz", index=False)
    items = set(part["item_id"])
    with (
        gzip.open(BEAUTY_DATA / items_file, "rt") as src,
        gzip.open(work / "beauty_sub_items.jsonl.gz", "wt") as dst,
    ):
        for line in src:
            if json.loads(line)["item_id"] in items:
                dst.write(line)
    return {"source": "local", "reviews": "beauty_sub_reviews.csv.gz", "items": "beauty_sub_items.jsonl.gz"}


# configs/beauty.yaml reads the titles; configs/beauty_notext.yaml on top, the attribute file.
CONFIGS = {
    "titles": (("configs/beauty.yaml",), "items_titles.jsonl.gz"),
    "notext": (("configs/beauty.yaml", "configs/beauty_notext.yaml"), "items.jsonl.gz"),
}


@pytest.mark.skipif(not BEAUTY_DATA.is_dir(), reason=f"Amazon Beauty data folder {BEAUTY_DATA} is absent")
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_beauty_settings_beat_popularity_on_held_out_users(tmp_path, kind):
    configs, items_file = CONFIGS[kind]
    work = copy_checkout(tmp_path / "work")
    spec = _subsample(work, items_file)
    # configs/beauty.yaml's `finetune.min_steps` would stretch this half's 16 epochs of 25 steps
    # (and its patience) to 56 (minutes of CI time); the test keeps the 16, which learn well past
    # its margin, and the demo's test_min_steps_stretch_the_schedule_of_a_small_data_set covers
    # the setting.
    subsample = {"dataset": "beauty_sub", "datasets": {"beauty_sub": spec}, "finetune": {"min_steps": 0}}
    (work / "subsample.yaml").write_text(json.dumps(subsample))
    snakemake(work, "--cores", "2", "--configfile", *configs, "subsample.yaml", timeout=2400)
    out = work / "results" / "beauty_sub"
    stats = json.loads((out / "processed" / "stats.json").read_text())
    assert stats["users"] > 5000 and stats["items"] > 3000, stats
    full = json.loads((out / "full-s0" / "metrics.json").read_text())["test"]
    popularity = json.loads((out / "baselines" / "popularity" / "metrics.json").read_text())["test"]
    assert full["users"] == popularity["users"] > 5000
    for key in ("Recall@20", "NDCG@100"):
        assert full[key] > MARGIN * popularity[key], (key, full, popularity)
