"""Which items gain (issue 23): test Recall@20 per item-popularity bucket, for several runs'
recommendations on the same split.

A test pair (user, item) falls in the bucket of its item's number of train interactions; a
bucket's Recall@20 is the share of its test pairs found in that user's top 20 (pairs pooled
over users, so a bucket's value does not depend on how the pairs split among users). The last
column is the ordinary per-user mean Recall@20 over all users, as `metrics.json` has it.

    .venv/bin/python bench/item_buckets.py --processed results/beauty/processed \
        full=results/beauty/full-s0/recommendations.parquet \
        notext=results/beauty_notext/full-s0/recommendations.parquet \
        EASE=results/beauty/baselines/ease/recommendations.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

EDGES = (0, 5, 10, 20, 50, 100)


def bucket_labels(edges: tuple[int, ...] = EDGES) -> list[str]:
    """`lo-hi` for each closed bucket of train counts, `lo+` for the last."""
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]


def bucket_recall(
    interactions: pd.DataFrame, recommendations: pd.DataFrame, k: int = 20, edges: tuple[int, ...] = EDGES
) -> pd.Series:
    """Pooled test Recall@k per bucket of the items' train counts, and the per-user mean
    Recall@k over all test users as `all`."""
    n_items = int(interactions["iid"].max()) + 1
    train = np.bincount(interactions.loc[interactions["split"] == "train", "iid"], minlength=n_items)
    test = interactions.loc[interactions["split"] == "test", ["uid", "iid"]]
    top = recommendations.loc[recommendations["rank"] <= k, ["uid", "iid"]].assign(hit=True)
    pairs = test.merge(top, on=["uid", "iid"], how="left")
    pairs["hit"] = pairs["hit"].fillna(False).astype(bool)
    pairs["bucket"] = np.searchsorted(np.asarray(edges[1:]), train[pairs["iid"].to_numpy()], side="right")
    labels = bucket_labels(edges)
    per_bucket = pairs.groupby("bucket")["hit"].mean().reindex(range(len(labels)))
    out = pd.Series(per_bucket.to_numpy(), index=labels)
    per_user = pairs.groupby("uid")["hit"].agg(["sum", "size"])
    out["all"] = float((per_user["sum"] / np.minimum(k, per_user["size"])).mean())
    return out


def bucket_pairs(interactions: pd.DataFrame, edges: tuple[int, ...] = EDGES) -> pd.DataFrame:
    """Test pairs and items per bucket of train counts (the table's header rows)."""
    n_items = int(interactions["iid"].max()) + 1
    train = np.bincount(interactions.loc[interactions["split"] == "train", "iid"], minlength=n_items)
    test_iids = interactions.loc[interactions["split"] == "test", "iid"].to_numpy()
    item_bucket = np.searchsorted(np.asarray(edges[1:]), train, side="right")
    labels = bucket_labels(edges)
    return pd.DataFrame(
        {
            "items": np.bincount(item_bucket, minlength=len(labels)),
            "test pairs": np.bincount(item_bucket[test_iids], minlength=len(labels)),
        },
        index=labels,
    ).T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processed", type=Path, required=True, help="the runs' processed/ folder (one split)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--edges", type=int, nargs="+", default=list(EDGES), help="lower bounds of the buckets, from 0")
    ap.add_argument("runs", nargs="+", help="name=path/to/recommendations.parquet")
    args = ap.parse_args()
    edges = tuple(args.edges)
    if edges[0] != 0 or any(a >= b for a, b in zip(edges, edges[1:], strict=False)):
        raise SystemExit(f"--edges must start at 0 and increase, got {list(edges)}")
    interactions = pd.read_parquet(args.processed / "interactions.parquet", columns=["uid", "iid", "split"])
    rows = {}
    for spec in args.runs:
        name, path = spec.split("=", 1)
        recs = pd.read_parquet(path, columns=["uid", "rank", "iid"])
        rows[name] = bucket_recall(interactions, recs, args.k, edges)
    table = pd.concat([bucket_pairs(interactions, edges), pd.DataFrame(rows).T])
    print(table.to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()
