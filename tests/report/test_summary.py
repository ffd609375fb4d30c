"""Summary, paired tests, figures and baseline runs (llm4rec.report.tables, llm4rec.baselines.runs) on hand data."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats

from llm4rec.baselines.runs import BASELINES, run_baseline, write_baseline_run
from llm4rec.core.hashing import sha256_file
from llm4rec.graph.relation import RelationIndex, relation_from_hops
from llm4rec.model.encoding import KIND, Examples
from llm4rec.report.bias import plot_relation_bias, second_order_bias
from llm4rec.report.figures import plot_methods, plot_multivae_curves, plot_training_curves
from llm4rec.report.provenance import dataset_stats_html, provenance_html
from llm4rec.report.stats import paired_wilcoxon, per_user_mean
from llm4rec.report.tables import RunRecord, benchmark_seconds, display_table, method_table, summary_table

METRICS = ("Recall@20", "Recall@40", "NDCG@100")


def _run(tmp_path, name, test, seconds=None, epoch=3, users=4):
    """A run folder as `evaluate` writes it (metrics.json), plus a benchmark file."""
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "test": {**dict(zip(METRICS, test)), "users": users},
                "val": dict(zip(METRICS, [v / 2 for v in test])),
                "epoch": epoch,
            }
        )
    )
    bench = []
    for k, s in enumerate(seconds or []):
        b = tmp_path / "bench" / f"{name}-{k}.tsv"
        b.parent.mkdir(exist_ok=True)
        b.write_text("s\th:m:s\tmax_rss\n" + f"{s + 100}\t0:00:01\t1\n" + f"{s}\t0:00:01\t1\n")  # last row counts
        bench.append(b)
    return d, bench


def _per_user(values, uids=None):
    uids = np.arange(len(values)) if uids is None else np.asarray(uids)
    return pd.DataFrame({"uid": uids, "n_targets": 1, "Recall@20": values, "Recall@40": values, "NDCG@100": values})


def test_benchmark_seconds_sums_last_rows_and_refuses_partial(tmp_path):
    _, bench = _run(tmp_path, "a", (0.1, 0.2, 0.3), seconds=[1.5, 2.25, 0.25])
    assert benchmark_seconds(bench) == pytest.approx(4.0)
    assert math.isnan(benchmark_seconds([*bench, tmp_path / "missing.tsv"]))
    assert math.isnan(benchmark_seconds([]))


def test_summary_and_method_table_mean_std(tmp_path):
    recs = []
    for seed, r20 in ((0, 0.2), (1, 0.4), (2, 0.3)):
        d, b = _run(tmp_path, f"full-s{seed}", (r20, r20 + 0.1, r20 / 2), seconds=[10 + seed, 1, 1])
        recs.append(RunRecord("full", "variant", seed, d, b))
    d, b = _run(tmp_path, "pop", (0.1, 0.2, 0.05), seconds=[2], epoch=None)
    recs.append(RunRecord("popularity", "baseline", None, d, b))
    s = summary_table(recs)
    assert list(s["method"]) == ["full"] * 3 + ["popularity"]
    assert s.loc[0, "Recall@20"] == 0.2 and s.loc[0, "val_Recall@20"] == 0.1 and s.loc[0, "users"] == 4
    assert list(s["seconds"]) == [12, 13, 14, 2]
    assert pd.isna(s.loc[3, "seed"]) and pd.isna(s.loc[3, "epoch"])

    m = method_table(s)
    full = m.set_index("method").loc["full"]
    assert full["n_seeds"] == 3
    assert full["Recall@20_mean"] == pytest.approx(0.3)
    assert full["Recall@20_std"] == pytest.approx(np.std([0.2, 0.4, 0.3], ddof=1))
    assert full["seconds_mean"] == pytest.approx(13)
    pop = m.set_index("method").loc["popularity"]
    assert pop["n_seeds"] == 1 and math.isnan(pop["Recall@20_std"])  # one run: no spread
    shown = display_table(m)
    assert shown.loc[0, "Recall@20"] == f"0.3000 ± {np.std([0.2, 0.4, 0.3], ddof=1):.4f}"
    assert shown.loc[1, "Recall@20"] == "0.1000" and shown.loc[1, "time (s)"] == "2.0"


def test_per_user_mean_averages_seeds_over_common_users():
    a = _per_user([1.0, 0.0, 0.5], uids=[0, 1, 2])
    b = _per_user([0.0, 1.0, 0.5, 1.0], uids=[0, 1, 2, 3])
    m = per_user_mean([a, b])
    assert list(m.index) == [0, 1, 2]
    np.testing.assert_allclose(m.to_numpy(), [0.5, 0.5, 0.5])


def test_paired_wilcoxon_matches_scipy_on_seed_means():
    rng = np.random.default_rng(0)
    n = 60
    full = [rng.random(n), rng.random(n)]
    abl = [np.clip(f - 0.1 + 0.05 * rng.standard_normal(n), 0, 1) for f in full]
    per_user = {
        "full": [_per_user(f) for f in full],
        "no_edge_bias": [_per_user(a) for a in abl],
        "same": [_per_user(f) for f in full],
    }
    w = paired_wilcoxon(per_user, reference="full").set_index("method")
    ref = scipy.stats.wilcoxon((full[0] + full[1]) / 2, (abl[0] + abl[1]) / 2)
    assert w.loc["no_edge_bias", "p_value"] == pytest.approx(ref.pvalue)
    assert w.loc["no_edge_bias", "statistic"] == pytest.approx(ref.statistic)
    assert w.loc["no_edge_bias", "n_users"] == n
    assert w.loc["no_edge_bias", "mean_diff"] == pytest.approx(np.mean((full[0] + full[1]) / 2 - (abl[0] + abl[1]) / 2))
    assert w.loc["no_edge_bias", "p_value"] < 1e-3
    # identical per-user values: nothing to test
    assert w.loc["same", "n_nonzero"] == 0 and math.isnan(w.loc["same", "p_value"])
    with pytest.raises(ValueError, match="reference"):
        paired_wilcoxon({"a": [_per_user([1.0])]}, reference="full")


def test_method_table_carries_p_values(tmp_path):
    recs = []
    for name in ("full", "no_edge_bias"):
        d, b = _run(tmp_path, name, (0.3, 0.4, 0.2), seconds=[1])
        recs.append(RunRecord(name, "variant", 0, d, b))
    w = pd.DataFrame(
        [
            {
                "method": "no_edge_bias",
                "reference": "full",
                "metric": "Recall@20",
                "n_users": 4,
                "n_nonzero": 4,
                "mean_reference": 0.3,
                "mean_method": 0.2,
                "mean_diff": 0.1,
                "statistic": 1.0,
                "p_value": 0.0123,
            }
        ]
    )
    m = method_table(summary_table(recs), w).set_index("method")
    assert pd.isna(m.loc["full", "wilcoxon_p"]) and m.loc["no_edge_bias", "wilcoxon_p"] == 0.0123
    shown = display_table(m.reset_index())
    assert list(shown["p (Recall@20 vs full)"]) == ["", "0.0123"]


def test_figures_are_written(tmp_path):
    s = pd.DataFrame(
        {
            "method": ["full", "full", "pop"],
            "seed": [0, 1, None],
            **{k: [0.3, 0.35, 0.1] for k in METRICS},
            "seconds": [1.0, 2.0, 0.5],
        }
    )
    plot_methods(method_table(s.assign(kind="x")), s, tmp_path / "m.svg")
    pre = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "kind": ["content", "collab", "collab"],
            "loss": [2.0, 1.5, 1.0],
            "reg": 0.0,
            "seconds": 1.0,
        }
    )
    fin = pd.DataFrame(
        {"epoch": [0, 1], "loss": [3.0, 2.0], **{f"val_{k}": [0.1, 0.2] for k in METRICS}, "val_score": [0.3, 0.6]}
    )
    plot_training_curves(
        "full", {0: {"pretrain": pre, "finetune": fin}, 1: {"pretrain": pre, "finetune": fin}}, tmp_path / "c.svg"
    )
    vae = pd.DataFrame(
        {
            "epoch": [0, 1],
            "loss": [5.0, 4.0],
            "beta": [0.0, 0.1],
            **{k: [0.1, 0.2] for k in METRICS},
            "selection": [0.3, 0.6],
        }
    )
    plot_multivae_curves({0: vae}, tmp_path / "v.svg")
    for f in ("m.svg", "c.svg", "v.svg"):
        text = (tmp_path / f).read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text


def test_second_order_bias_is_the_collator_mask_of_a_real_prompt(tmp_path):
    """Entity sub-matrix of the heatmap = R(hop distance) below the diagonal, blank above."""
    rng = np.random.default_rng(3)
    dense = (rng.random((12, 9)) < 0.3).astype(np.float32)
    dense[np.arange(9), np.arange(9)] = 1  # every item has an edge
    train = sp.csr_matrix(dense)
    index = RelationIndex(train, max_hops=5)
    vocab, n_users, n_items = 50, 12, 9
    items = [0, 3, 5, 8]
    ids = np.concatenate(
        [[1, 2], vocab + n_users + np.array(items[:2]), [3], vocab + n_users + np.array(items[2:]), [4]]
    )
    text_only = np.array([5, 6, 7])
    ex = Examples(
        ids=np.concatenate([text_only, ids]),
        offsets=np.array([0, 3, 3 + ids.size]),
        prompt_len=np.array([3, ids.size], dtype=np.int32),
        kind=np.array([KIND["review"], KIND["so_brand"]], dtype=np.int8),
        uid=np.array([-1, -1]),
        items=np.empty(0, dtype=np.int64),
        item_offsets=np.zeros(3, dtype=np.int64),
    )
    b = second_order_bias(ex, index, vocab, n_users, n_items, 12)
    assert b.example == 1 and b.kind == "so_brand"
    assert b.labels == [f"item_{i}" for i in items]
    nodes = n_users + np.array(items)
    hops = index.hops(np.repeat(nodes, 4), np.tile(nodes, 4)).reshape(4, 4)
    np.testing.assert_array_equal(b.hops, hops)
    want = relation_from_hops(hops, index.d6).astype(np.float64)
    lower = np.tril(np.ones((4, 4), dtype=bool))
    np.testing.assert_allclose(b.bias[lower], want[lower], rtol=0, atol=1e-6)
    assert np.isnan(b.bias[~lower]).all()
    plot_relation_bias(b, tmp_path / "h.svg")
    assert "<svg" in (tmp_path / "h.svg").read_text()
    no_graph = Examples(
        ids=text_only,
        offsets=np.array([0, 3]),
        prompt_len=np.array([3], dtype=np.int32),
        kind=np.array([KIND["review"]], dtype=np.int8),
        uid=np.array([-1]),
        items=np.empty(0, dtype=np.int64),
        item_offsets=np.zeros(2, dtype=np.int64),
    )
    with pytest.raises(ValueError, match="second-order"):
        second_order_bias(no_graph, index, vocab, n_users, n_items, 12)


def test_provenance_and_dataset_pages(tmp_path):
    raw = tmp_path / "reviews.json.gz"
    raw.write_bytes(b"abc")
    page = provenance_html("seeds: [0]\n", "0123abc", {"numpy": "1.0"}, {"reviews": raw})
    assert sha256_file(raw) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(raw) in page and "0123abc" in page and "seeds: [0]" in page and "numpy" in page
    stats = {
        "users": 7,
        "items": 5,
        "interactions": 30,
        "sparsity": 0.1,
        "per_split": {"train": 20},
        "steps": {"k_core": {"interactions": 30, "users": 7, "items": 5}},
    }
    page = dataset_stats_html("demo", stats, {"nodes": 12, "edges": 20, "item_pair_hops": {"histogram": {"2": 4}}})
    assert "k_core" in page and ">12<" in page and ">20<" in page


def _blocks(seed=0):
    """Two user blocks, each buying from its own item block (train 4, val 1, test 1 per user)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 20
    out = {k: np.zeros((n_users, n_items), dtype=np.float32) for k in ("train", "val", "test")}
    for u in range(n_users):
        items = (u % 2) * 10 + rng.choice(10, 6, replace=False)
        out["train"][u, items[:4]] = 1
        out["val"][u, items[4]] = 1
        out["test"][u, items[5]] = 1
    return {k: sp.csr_matrix(v) for k, v in out.items()}


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_run_writes_a_variants_files(tmp_path, name):
    mats = _blocks()
    settings = {
        "multivae": {"epochs": 3, "patience": 3, "batch_size": 16, "total_anneal_steps": 5},
        "ease": {"lambdas": [1.0, 10.0]},
    }.get(name, {})
    run = run_baseline(name, mats, settings, seed=1, top_k=5)
    m = run.metrics
    assert set(m["test"]) == {*METRICS, "users"} and set(m["val"]) == set(METRICS)
    assert m["test"]["users"] == 40
    assert (m["epoch"] is None) == (name != "multivae")
    assert list(run.per_user.columns) == ["uid", "n_targets", *METRICS]
    assert run.per_user["Recall@20"].mean() == pytest.approx(m["test"]["Recall@20"])
    assert list(run.recommendations.columns) == ["uid", "rank", "iid", "score"]
    assert run.recommendations.groupby("uid").size().eq(5).all()
    # never recommends a train item
    rec = run.recommendations
    assert mats["train"][rec["uid"].to_numpy(), rec["iid"].to_numpy()].sum() == 0
    if name == "ease":
        assert len(run.history) == 2 and m["lambda"] in (1.0, 10.0)
    if name == "multivae":
        assert len(run.history) == 3
    paths = [tmp_path / f for f in ("metrics.json", "per_user.parquet", "recommendations.parquet", "history.csv")]
    write_baseline_run(run, *paths)
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(m))
    pd.testing.assert_frame_equal(pd.read_parquet(paths[1]), run.per_user)


def test_block_baselines_beat_popularity():
    mats = _blocks()
    pop = run_baseline("popularity", mats).metrics["test"]["Recall@20"]
    for name in ("itemknn", "ease"):
        assert (
            run_baseline(name, mats, {"lambdas": [1.0]} if name == "ease" else {}).metrics["test"]["Recall@20"] >= pop
        )
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baseline("bpr", mats)


def test_report_metric_names_are_the_evaluated_ones():
    """report.py writes the names out (it must not import torch); they must stay the same."""
    from llm4rec.core.constants import METRICS as evaluated
    from llm4rec.core.constants import METRICS as reported

    assert reported == evaluated


def test_training_curves_fit_the_report_and_legends_cover_no_curve(tmp_path):
    """Three seeds: each legend lies outside its plot and inside the figure, and the SVG is at
    most 7 inches (672 px) wide, what the report's page shows beside a caption at 1400 px."""
    from llm4rec.report.figures import FIGURE_WIDTH_IN, training_curves_figure

    pre = pd.DataFrame(
        {
            "epoch": [0, 1, 2, 3],
            "kind": ["content", "collab", "collab", "content"],
            "loss": [8.0, 6.0, 5.0, 4.0],
            "reg": 0.0,
            "seconds": 1.0,
        }
    )
    fin = pd.DataFrame(
        {"epoch": [0, 1], "loss": [3.0, 2.0], **{f"val_{k}": [0.1, 0.2] for k in METRICS}, "val_score": [0.3, 0.6]}
    )
    fig = training_curves_figure("full", {s: {"pretrain": pre, "finetune": fin} for s in range(3)})
    fig.canvas.draw()
    whole = fig.bbox
    legends = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        box, plot = legend.get_window_extent(), ax.get_window_extent()
        assert not box.overlaps(plot), (ax.get_title(), box, plot)
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0, (ax.get_title(), box, whole)
    assert legends == 3
    fig.savefig(tmp_path / "c.svg")
    width = re.search(r'<svg[^>]* width="([\d.]+)pt"', (tmp_path / "c.svg").read_text()).group(1)
    assert float(width) <= FIGURE_WIDTH_IN * 72 <= 7 * 72
