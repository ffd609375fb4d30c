"""The committed demo files are what the generator writes; the generator has structure."""

from __future__ import annotations

import hashlib

import numpy as np
from conftest import REPO

from llm4rec.data import demo


def test_generator_reproduces_committed_demo(tmp_path):
    paths = demo.write_raw(tmp_path)
    for kind, path in paths.items():
        committed = REPO / "resources" / "demo" / f"{kind}.json.gz"
        assert committed.stat().st_size < 1_000_000
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(committed.read_bytes()).hexdigest(), (
            f"{committed} differs from the generator's output: regenerate it only with a note in the README"
        )


def test_users_concentrate_on_few_clusters():
    items, reviews = demo.generate_interactions(demo.DEMO)
    cluster = items["cluster"].to_numpy()[reviews["item"].to_numpy()]
    share = reviews.assign(c=cluster).groupby("user")["c"].agg(lambda c: np.bincount(c).max() / len(c))
    n_clusters = items["cluster"].nunique()
    assert share.mean() > 3 / n_clusters  # far from uniform tastes
    assert 0.1 < (reviews["rating"] <= 3).mean() < 0.25
