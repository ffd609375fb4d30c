"""The main command on every kind of source: plan, run the default target, report.

Each test plans (`snakemake -n`) and runs the README's command with no target (so the whole
default target, report figures and provenance included) under the short CI schedule, then
builds `snakemake --report`, on a tiny dataset of its own in a fresh copy of the checkout.
The demo's default target is run once per session by the `demo_run` fixture (shared with
tests/report/test_report.py, which also renders its report); its test here only adds the plan and
the checks every other source gets.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CI_CONFIG, REPO, copy_checkout, planned_jobs, snakemake

from llm4rec.data import demo
from llm4rec.model.edge_model import EdgeAwareRecModel

pytestmark = pytest.mark.slow

# About 150 users and 100 items after the 5-core: the demo's structure at half its size.
SMALL = demo.DemoSettings(n_users=200, n_items=120, n_reviews=2400, malformed=False)
BEAUTY_DATA = REPO.parent / "shared" / "data" / "beauty"
MAIN_RULES = {"pretrain", "finetune", "evaluate", "baseline", "summary", "report_bias", "report_provenance", "all"}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_dir(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    root = tmp_path_factory.mktemp("http")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def small_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generated (items, reviews) with the demo's structure, in canonical column names."""
    items, reviews = demo.generate_interactions(SMALL)
    asin = items["asin"].to_numpy()
    canon = pd.DataFrame(
        {
            "user_id": [f"U{u:05d}" for u in reviews["user"]],
            "item_id": asin[reviews["item"]],
            "rating": reviews["rating"].to_numpy(),
            "timestamp": reviews["timestamp"].to_numpy(),
        }
    )
    items = items.assign(
        title=[f"{b} {demo.NOUNS[n].title()}" for b, n in zip(items["brand_name"], items["noun"])],
        categories=[
            [demo.ROOT_CATEGORY, demo.TOP_CATEGORIES[t], demo.NOUNS[n].title()]
            for t, n in zip(items["top"], items["noun"])
        ],
    )
    return items, canon


def _write_config(work: Path, dataset: str, spec: dict) -> str:
    (work / "source.yaml").write_text(json.dumps({"dataset": dataset, "datasets": {dataset: spec}}))
    return "source.yaml"


def _main_command(work: Path, dataset: str, *configs: str) -> Path:
    """Plan and run the default target, then build the report; returns the dataset's results."""
    plan = planned_jobs(snakemake(work, "-n", *configs))
    assert MAIN_RULES <= set(plan), plan
    snakemake(work, "--cores", "2", *configs)
    out = work / "results" / dataset
    metrics = json.loads((out / "full-s0" / "metrics.json").read_text())
    assert math.isfinite(metrics["test"]["Recall@20"]) and 0 <= metrics["test"]["Recall@20"] <= 1
    assert metrics["test"]["users"] > 0
    report = work / "report.html"
    snakemake(work, "--report", str(report), *configs, timeout=600)
    text = report.read_text()
    assert report.stat().st_size > 100_000
    for page in ("summary.html", "relation_bias.svg", "provenance.html", "dataset.html"):
        assert page in text, page
    return out


def _assert_histories_finite(out: Path) -> None:
    for stage in ("pretrain", "finetune"):
        history = pd.read_csv(out / "full-s0" / stage / "history.csv")
        assert len(history) > 0, stage
        numbers = history.select_dtypes("number")
        assert not numbers.isna().any().any(), (stage, history)


def _has_heatmap(out: Path) -> bool:
    return "No second-order prompt" not in (out / "report" / "relation_bias.svg").read_text()


def test_demo_source(demo_run, tmp_path):
    """`source: demo` (file:// URLs to resources/demo/): the default target plans on a fresh
    clone; `demo_run` ran it (README's `snakemake --cores all`, full demo schedule)."""
    plan = planned_jobs(snakemake(copy_checkout(tmp_path / "fresh"), "-n"))
    assert MAIN_RULES | {"download", "convert"} <= set(plan), plan
    out = demo_run / "results" / "demo"
    metrics = json.loads((out / "full-s0" / "metrics.json").read_text())
    assert math.isfinite(metrics["test"]["Recall@20"]) and metrics["test"]["users"] > 0
    assert planned_jobs(snakemake(demo_run, "-n")) == {}
    report = tmp_path / "report.html"
    snakemake(demo_run, "--report", str(report), timeout=600)
    assert report.stat().st_size > 100_000 and "relation_bias.svg" in report.read_text()
    assert _has_heatmap(out)


def test_url_source_amazon2018_files_over_http(tmp_path, http_dir):
    """`source: url` with a 2018 pair (`{cat}_5.json.gz`, `meta_{cat}.json.gz`) over HTTP."""
    root, base = http_dir
    written = demo.write_raw(tmp_path / "raw", SMALL)
    os.replace(written["reviews"], root / "Small_Beauty_5.json.gz")
    os.replace(written["meta"], root / "meta_Small_Beauty.json.gz")
    work = copy_checkout(tmp_path / "work")
    cfg = _write_config(
        work,
        "small2018",
        {"source": "url", "reviews": f"{base}/Small_Beauty_5.json.gz", "meta": f"{base}/meta_Small_Beauty.json.gz"},
    )
    out = _main_command(work, "small2018", *CI_CONFIG, cfg)
    record = json.loads((work / "resources" / "raw" / "small2018" / "download.json").read_text())
    assert record["reviews"]["url"].startswith("http://127.0.0.1:")
    _assert_histories_finite(out)
    assert _has_heatmap(out)


def _write_gz_lines(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def test_url_source_amazon2014_files_over_http(tmp_path, http_dir, small_tables):
    """`source: url` with a 2014 pair: `reviews_{cat}_5.json.gz` (JSON) and Python-literal meta
    lines with nested `categories` lists, as SNAP published them."""
    root, base = http_dir
    items, reviews = small_tables
    rng = np.random.default_rng(14)
    review_lines = [
        json.dumps(
            {
                "reviewerID": r.user_id,
                "asin": r.item_id,
                "reviewerName": "someone",
                "helpful": [0, 0],
                "reviewText": f"Nice product number {r.item_id[-3:]}",
                "overall": float(r.rating),
                "summary": "ok",
                "unixReviewTime": int(r.timestamp),
                "reviewTime": pd.Timestamp(int(r.timestamp), unit="s").strftime("%m %d, %Y"),
            }
        )
        for r in reviews.itertuples(index=False)
    ]
    meta_lines = [
        repr(
            {
                "asin": it.asin,
                "title": it.title,
                "price": round(float(rng.uniform(3, 40)), 2),
                "imUrl": f"http://example.invalid/{it.asin}.jpg",
                "salesRank": {"Beauty": int(rng.integers(1, 10**5))},
                "brand": it.brand_name,
                "categories": [list(it.categories)],
                "related": {"also_bought": [items["asin"].iloc[(k + 1) % len(items)]]},
            }
        )
        for k, it in enumerate(items.itertuples(index=False))
    ]
    _write_gz_lines(root / "reviews_Small_Beauty_5.json.gz", review_lines)
    _write_gz_lines(root / "meta_Small_Beauty_2014.json.gz", meta_lines)
    work = copy_checkout(tmp_path / "work")
    cfg = _write_config(
        work,
        "small2014",
        {
            "source": "url",
            "reviews": f"{base}/reviews_Small_Beauty_5.json.gz",
            "meta": f"{base}/meta_Small_Beauty_2014.json.gz",
        },
    )
    out = _main_command(work, "small2014", *CI_CONFIG, cfg)
    convert = json.loads((out / "interim" / "convert.json").read_text())
    assert convert["reviews"]["rejected"] == convert["meta"]["rejected"] == 0
    catalog = pd.read_parquet(out / "processed" / "items.parquet")
    assert catalog["categories"].map(len).min() == 3 and catalog["brand"].notna().all()
    _assert_histories_finite(out)
    assert _has_heatmap(out)


def test_local_csv_interactions_only(tmp_path, small_tables):
    """`source: local`, CSV with interactions only and an items table of bare ids: no content
    text and no second-order group, yet the main command trains and the report says so."""
    items, reviews = small_tables
    work = copy_checkout(tmp_path / "work")
    reviews.to_csv(work / "interactions.csv", index=False)
    items[["asin"]].rename(columns={"asin": "item_id"}).to_csv(work / "items.csv", index=False)
    cfg = _write_config(work, "bare", {"source": "local", "reviews": "interactions.csv", "items": "items.csv"})
    out = _main_command(work, "bare", *CI_CONFIG, cfg)
    _assert_histories_finite(out)
    svg = (out / "report" / "relation_bias.svg").read_text()
    assert "<svg" in svg and "No second-order prompt" in svg
    assert "no second-order prompt" in (work / "logs" / "bare" / "report_bias.log").read_text()


def test_local_jsonl_categories_only(tmp_path, small_tables):
    """`source: local`, JSON lines: interactions without texts, items with categories only,
    fine-tuned with `shared_users` as configs/beauty.yaml does (no user occurs in a content
    example, so every user reads one shared vector) and the optional `untied_head`."""
    items, reviews = small_tables
    work = copy_checkout(tmp_path / "work")
    reviews.to_json(work / "interactions.jsonl", orient="records", lines=True)
    items[["asin", "categories"]].rename(columns={"asin": "item_id"}).to_json(
        work / "items.jsonl", orient="records", lines=True
    )
    cfg = _write_config(work, "cats", {"source": "local", "reviews": "interactions.jsonl", "items": "items.jsonl"})
    (work / "shared.yaml").write_text("finetune: {shared_users: true, untied_head: true}\n")
    out = _main_command(work, "cats", *CI_CONFIG, cfg, "shared.yaml")
    _assert_histories_finite(out)
    assert _has_heatmap(out)
    model = EdgeAwareRecModel.load(out / "full-s0" / "finetune")
    assert not model.has_content[: model.n_users].any()
    assert set(model.user_row.tolist()) == {0}
    assert model.rec_item is not None and model.rec_item.shape == model.tables["collab_item"].weight.shape
    log = (work / "logs" / "cats" / "full-s0" / "finetune.log").read_text()
    assert f"finetune: {model.n_users} users without content share one user vector" in log


@pytest.mark.skipif(not BEAUTY_DATA.is_dir(), reason=f"Amazon Beauty data folder {BEAUTY_DATA} is absent")
def test_beauty_config_plans_the_main_command(tmp_path):
    """configs/beauty.yaml (`source: local` on ../shared/data/beauty/) plans the default target."""
    work = copy_checkout(tmp_path / "main")
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")  # the config's relative ../shared
    plan = planned_jobs(snakemake(work, "-n", "--configfile", "configs/beauty.yaml"))
    assert MAIN_RULES | {"import_local", "preprocess"} <= set(plan), plan
    assert "download" not in plan and "convert" not in plan


@pytest.mark.skipif(not BEAUTY_DATA.is_dir(), reason=f"Amazon Beauty data folder {BEAUTY_DATA} is absent")
def test_beauty_titles_and_notext_share_the_split(tmp_path):
    """configs/beauty.yaml's `beauty` (titles) and `beauty_notext` (attributes alone) hold the
    same interactions and split, so that with/without-text runs pair user by user."""
    work = copy_checkout(tmp_path / "main")
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    tables = {}
    for name in ("beauty", "beauty_notext"):
        snakemake(
            work, "--cores", "1", "--configfile", "configs/beauty.yaml", "--config", f"dataset={name}",
            "--until", "preprocess",
        )  # fmt: skip
        processed = work / "results" / name / "processed"
        tables[name] = tuple(pd.read_parquet(processed / f) for f in ("interactions.parquet", "items.parquet"))
    (inter, items), (inter_nt, items_nt) = tables["beauty"], tables["beauty_notext"]
    assert len(inter) == 198_502
    pd.testing.assert_frame_equal(inter, inter_nt)
    pd.testing.assert_series_equal(items["item_id"], items_nt["item_id"])
    assert items["title"].notna().sum() == 12_094 and items_nt["title"].isna().all()
