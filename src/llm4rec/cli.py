"""Command line: `llm4rec recommend` (one user's top items) and `llm4rec demo-data`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


class UnknownUserError(LookupError):
    """The user has no entity token: only users seen in training can be scored."""


def recommendations_for(run: Path, user: str, top: int = 10) -> tuple[int, str, pd.DataFrame]:
    """Top items of one user (uid or original user id) from a run's recommendations."""
    run = Path(run)
    rec_path = run / "recommendations.parquet"
    if not rec_path.is_file():
        raise FileNotFoundError(f"{rec_path} does not exist: run the workflow's evaluate stage for this run first")
    processed = run.parent / "processed"
    users = pd.read_parquet(processed / "users.parquet")
    if user.isdigit() and int(user) < len(users):
        uid = int(user)
    else:
        match = users.index[users["user_id"] == user]
        if len(match) == 0:
            raise UnknownUserError(
                f"user {user!r} is not in this dataset ({len(users)} users, uids 0..{len(users) - 1}). "
                "New users have no entity token: the model can only rank items for users it was trained on."
            )
        uid = int(users.loc[match[0], "uid"])
    recs = pd.read_parquet(rec_path, filters=[("uid", "==", uid)])
    if recs.empty:
        raise UnknownUserError(f"user {uid} has no recommendations in {rec_path} (no test items to evaluate)")
    items = pd.read_parquet(processed / "items.parquet", columns=["iid", "item_id", "title"])
    recs = recs.sort_values("rank").head(top).merge(items, on="iid", how="left")
    return uid, str(users.loc[uid, "user_id"]), recs[["rank", "iid", "item_id", "title", "score"]]


def _recommend(args: argparse.Namespace) -> int:
    try:
        uid, user_id, recs = recommendations_for(args.run, args.user, args.top)
    except (UnknownUserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"top {len(recs)} items for user_{uid} ({user_id}):")
    for r in recs.itertuples(index=False):
        title = r.title if isinstance(r.title, str) else "(no title)"
        print(f"{r.rank:>4}  item_{r.iid:<6} {r.item_id:<14} {r.score:9.4f}  {title}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from .demo import DEMO, beauty_sized, write_raw

    settings = beauty_sized(args.scale) if args.scale else DEMO
    paths = write_raw(Path(args.out), settings)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm4rec", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="print one user's top items with titles")
    rec.add_argument("--run", type=Path, required=True, help="a run directory, e.g. results/demo/full-s0")
    rec.add_argument("--user", required=True, help="uid (0..U-1) or the original user id")
    rec.add_argument("--top", type=int, default=10)
    rec.set_defaults(func=_recommend)
    demo = sub.add_parser("demo-data", help="write synthetic raw Amazon-format files")
    demo.add_argument("--out", required=True)
    demo.add_argument("--scale", type=int, default=0, help="0: the committed demo; N: N x Amazon Beauty size")
    demo.set_defaults(func=_demo_data)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
