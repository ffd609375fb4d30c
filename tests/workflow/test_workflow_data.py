"""The data stages as a user runs them: real Snakemake runs in a copy of the checkout."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, copy_checkout, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def test_demo_data_stages_then_nothing_to_do(checkout, demo_data):
    stats = json.loads((demo_data / "processed" / "stats.json").read_text())
    assert stats["users"] > 300 and stats["items"] > 200
    assert stats["per_split"]["val"] == stats["per_split"]["test"] > 0
    convert = json.loads((demo_data / "interim" / "convert.json").read_text())
    assert convert["reviews"]["rejected"] == 4  # the demo's malformed lines, set aside
    rejects = [json.loads(line) for line in (demo_data / "interim" / "rejects.jsonl").read_text().splitlines()]
    assert {r["file"] for r in rejects} == {"reviews", "meta"} and all(r["line"] > 0 for r in rejects)
    record = json.loads((checkout / "resources" / "raw" / "demo" / "download.json").read_text())
    assert record["reviews"]["url"].startswith("file://") and len(record["reviews"]["sha256"]) == 64
    again = snakemake(
        checkout,
        "-n",
        "results/demo/processed/stats.json",
        "results/demo/graph/stats.json",
        "results/demo/graph/second_order.parquet",
    )
    assert planned_jobs(again) == {}


def test_changed_core_setting_reruns_only_downstream(checkout, demo_data):
    targets = [
        "results/demo/processed/stats.json",
        "results/demo/graph/stats.json",
        "results/demo/graph/second_order.parquet",
    ]
    (checkout / "core4.yaml").write_text("preprocess: {min_rating: 3.0, user_core: 4, item_core: 5}\n")
    plan = planned_jobs(snakemake(checkout, *targets, "-n", "--configfile", "core4.yaml"))
    assert {"preprocess", "relation_matrix", "second_order"} <= set(plan)
    assert "download" not in plan and "convert" not in plan


def test_unknown_config_key_is_named(tmp_path):
    work = copy_checkout(tmp_path)
    (work / "typo.yaml").write_text("kcore: 5\n")
    proc = snakemake(work, "-n", "--configfile", "typo.yaml", check=False)
    assert proc.returncode != 0
    assert "kcore" in proc.stdout + proc.stderr


def _independent_counts(reviews_gz: Path, core: int = 5) -> dict:
    """The expected counts from the raw file, with pandas alone."""
    df = pd.read_json(reviews_gz, lines=True, dtype=False)
    df["line"] = np.arange(1, len(df) + 1)
    df["overall"] = df["overall"].astype(float)
    df["unixReviewTime"] = df["unixReviewTime"].astype(np.int64)
    kept = df[df["overall"] > 3.0]
    dedup = kept.sort_values(["unixReviewTime", "line"]).drop_duplicates(["reviewerID", "asin"])
    pairs = dedup
    while True:
        u = pairs.groupby("reviewerID")["asin"].transform("size")
        i = pairs.groupby("asin")["reviewerID"].transform("size")
        ok = (u >= core) & (i >= core)
        if ok.all():
            break
        pairs = pairs[ok]
    return {
        "reviews": len(df),
        "rating_filter": len(kept),
        "duplicates_collapsed": len(dedup),
        "k_core": len(pairs),
        "users": pairs["reviewerID"].nunique(),
        "items": pairs["asin"].nunique(),
    }


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")
def test_real_amazon_files_through_url_source(tmp_path):
    work = copy_checkout(tmp_path)
    reviews = SHARED_DATA / "Magazine_Subscriptions_5.json.gz"
    meta = SHARED_DATA / "meta_Magazine_Subscriptions.json.gz"
    (work / "real.yaml").write_text(
        json.dumps(
            {
                "dataset": "magazine_files",
                "datasets": {
                    "magazine_files": {
                        "source": "url",
                        "reviews": reviews.as_uri(),
                        "meta": meta.as_uri(),
                        "reviews_sha256": "95c124603d62d6acdfd1bd62284934fb6c513db836ea64c2e8176c14256426f2",
                        "meta_sha256": "147cb78dac0f9ce04849b196e2e13cad6a504bff45d53500b7a1fe8121d91595",
                    }
                },
            }
        )
    )
    snakemake(work, "results/magazine_files/processed/stats.json", "--cores", "2", "--configfile", "real.yaml")
    out = work / "results" / "magazine_files"
    stats = json.loads((out / "processed" / "stats.json").read_text())
    expected = _independent_counts(reviews)
    assert stats["steps"]["reviews"]["interactions"] == expected["reviews"] == 2375
    for step in ("rating_filter", "duplicates_collapsed", "k_core"):
        assert stats["steps"][step]["interactions"] == expected[step], step
    assert (stats["users"], stats["items"]) == (expected["users"], expected["items"])
    convert = json.loads((out / "interim" / "convert.json").read_text())
    assert convert["reviews"]["rejected"] == 0
    items = pd.read_parquet(out / "processed" / "items.parquet")
    assert not items["title"].fillna("").str.contains("<span").any()
    assert items["categories"].map(len).max() > 1
    with gzip.open(meta, "rt") as fh:
        n_meta = sum(1 for _ in fh)
    assert convert["meta"]["rows"] + convert["meta"]["rejected"] == n_meta


def test_local_source_skips_download_and_convert(tmp_path):
    work = copy_checkout(tmp_path)
    rng = np.random.default_rng(0)
    n = 1200
    reviews = pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, 60, n)],
            "item_id": [f"i{k}" for k in rng.integers(0, 40, n)],
            "rating": rng.choice([2.0, 4.0, 5.0], n),
            "timestamp": rng.integers(0, 10**6, n),
        }
    )
    reviews.loc[3, "rating"] = np.nan  # a bad row: counted and set aside
    reviews.to_csv(work / "mine.csv", index=False)
    pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(40)],
            "title": [f"Thing {k}" for k in range(40)],
            "brand": [f"B{k % 5}" for k in range(40)],
            "categories": ["Root|Sub" + str(k % 3) for k in range(40)],
        }
    ).to_json(work / "items.jsonl", orient="records", lines=True)
    (work / "local.yaml").write_text(
        json.dumps(
            {
                "dataset": "mine",
                "datasets": {"mine": {"source": "local", "reviews": "mine.csv", "items": "items.jsonl"}},
            }
        )
    )
    plan = planned_jobs(snakemake(work, "results/mine/processed/stats.json", "-n", "--configfile", "local.yaml"))
    assert "download" not in plan and "convert" not in plan and plan["import_local"] == 1
    snakemake(work, "results/mine/processed/stats.json", "--cores", "1", "--configfile", "local.yaml")
    rejects = (work / "results/mine/interim/rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1 and json.loads(rejects[0])["line"] == 4
    items = pd.read_parquet(work / "results/mine/processed/items.parquet")
    assert list(items["categories"].iloc[0]) in (["Root", "Sub0"], ["Root", "Sub1"], ["Root", "Sub2"])


def _named_rejects(proc) -> Path:
    """The rejects file the error message points the user to."""
    found = re.search(r"reasons are in (/\S+\.jsonl)", proc.stdout + proc.stderr)
    assert found, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Path(found.group(1))


def test_too_many_rejects_fail_clearly_and_keep_the_rejects(tmp_path):
    work = copy_checkout(tmp_path)
    good = {"overall": 5.0, "reviewerID": "A", "asin": "B", "unixReviewTime": 1}
    lines = [json.dumps(good)] * 50 + ["{broken"] * 5
    with gzip.open(work / "bad_reviews.json.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with gzip.open(work / "meta.json.gz", "wt") as fh:
        fh.write(json.dumps({"asin": "B", "title": "t"}) + "\n")
    (work / "bad.yaml").write_text(
        json.dumps(
            {
                "dataset": "bad",
                "datasets": {
                    "bad": {
                        "source": "url",
                        "reviews": (work / "bad_reviews.json.gz").as_uri(),
                        "meta": (work / "meta.json.gz").as_uri(),
                    }
                },
            }
        )
    )
    proc = snakemake(work, "results/bad/interim/convert.json", "--cores", "1", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    named = _named_rejects(proc)
    assert named == (work / "logs/bad/convert.rejects.jsonl").resolve()
    assert not (work / "results/bad/interim/rejects.jsonl").exists()  # deleted with the failed job
    kept = [json.loads(line) for line in named.read_text().splitlines()]
    assert [r["line"] for r in kept] == list(range(51, 56))
    assert all(r["text"] == "{broken" for r in kept)


def _local_reviews(n: int = 1200) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, 60, n)],
            "item_id": [f"i{k}" for k in rng.integers(0, 40, n)],
            "rating": rng.choice([4.0, 5.0], n),
            "timestamp": rng.integers(0, 10**6, n),
        }
    )


def test_local_too_many_rejects_keep_a_copy_the_error_names(tmp_path):
    work = copy_checkout(tmp_path)
    reviews = _local_reviews()
    reviews.loc[[5, 50, 500], "user_id"] = ""
    reviews.loc[range(100, 120), "rating"] = np.nan
    reviews.to_csv(work / "mine.csv", index=False)
    (work / "items.csv").write_text("item_id,title\ni1,t\n")
    (work / "local.yaml").write_text(
        json.dumps(
            {"dataset": "mine", "datasets": {"mine": {"source": "local", "reviews": "mine.csv", "items": "items.csv"}}}
        )
    )
    proc = snakemake(
        work, "results/mine/interim/convert.json", "--cores", "1", "--configfile", "local.yaml", check=False
    )
    assert proc.returncode != 0
    assert "23 of 1200 rows rejected" in proc.stdout + proc.stderr
    named = _named_rejects(proc)
    assert named == (work / "logs/mine/import_local.rejects.jsonl").resolve()
    kept = [json.loads(line) for line in named.read_text().splitlines()]
    assert sorted(r["line"] for r in kept) == sorted([6, 51, 501, *range(101, 121)])
    assert {r["reason"] for r in kept} == {"missing user_id", "rating is not a finite number"}


def test_empty_item_table_is_a_warning_in_stats_and_log(tmp_path):
    work = copy_checkout(tmp_path)
    _local_reviews().to_csv(work / "mine.csv", index=False)
    (work / "items.jsonl").write_text("")
    (work / "local.yaml").write_text(
        json.dumps(
            {
                "dataset": "mine",
                "datasets": {"mine": {"source": "local", "reviews": "mine.csv", "items": "items.jsonl"}},
            }
        )
    )
    snakemake(work, "results/mine/processed/stats.json", "--cores", "1", "--configfile", "local.yaml")
    stats = json.loads((work / "results/mine/processed/stats.json").read_text())
    assert stats["items_without_metadata"] == stats["items"] > 0
    (warning,) = stats["warnings"]
    assert "item table is empty" in warning
    assert f"WARNING llm4rec.data.preprocess: {warning}" in (work / "logs/mine/preprocess.log").read_text()
