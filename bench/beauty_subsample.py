"""A seeded random subsample of Beauty's users with titles, as a `local` dataset (issue 23's
language-prior and edge-bias studies, where the pre-trained backbone costs too much on CPU for
all 22,363 users).

The users are drawn uniformly from the whole 5-core file (not the most active or the first in
the file); every interaction of a drawn user is kept, with the title and categories of every item
they touch. Run the workflow on it with `preprocess: {user_core: 5, item_core: 1}`: each drawn
user still has at least 5 interactions, and items seen by one subsampled user stay (a k-core on
the items would empty most of the catalogue). Every method of a study reads the same files.

    .venv/bin/python bench/beauty_subsample.py --users 1000 --seed 0 --out sub1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty"


def subsample(beauty: Path, n_users: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reviews of `n_users` users drawn with `seed`, and the items they touch."""
    reviews = pd.read_csv(beauty / "reviews.csv.gz", dtype={"user_id": str, "item_id": str})
    users = np.sort(reviews["user_id"].unique())
    if not 0 < n_users <= len(users):
        raise SystemExit(f"--users must be in 1..{len(users)}, got {n_users}")
    drawn = np.random.default_rng(seed).choice(users, size=n_users, replace=False)
    kept = reviews[reviews["user_id"].isin(drawn)]
    items = pd.read_json(beauty / "items_titles.jsonl.gz", lines=True, dtype={"item_id": str})
    return kept, items[items["item_id"].isin(kept["item_id"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beauty", type=Path, default=BEAUTY, help="folder of the Beauty files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    reviews, items = subsample(args.beauty, args.users, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    reviews.to_csv(args.out / "reviews.csv", index=False)
    items.to_json(args.out / "items.jsonl", orient="records", lines=True)
    print(
        json.dumps(
            {
                "users": int(reviews["user_id"].nunique()),
                "items": len(items),
                "interactions": len(reviews),
                "items_seen_once": int((reviews["item_id"].value_counts() == 1).sum()),
            }
        )
    )


if __name__ == "__main__":
    main()
