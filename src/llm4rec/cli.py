"""Command line: `llm4rec recommend` (one user's top items) and `llm4rec demo-data`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


class UnknownUserError(LookupError):
    """The user has no entity token: only users seen in training can be scored."""


class RunError(LookupError):
    """The --run folder is not a run, or its lists rank other data than the folder beside it."""


def processed_folder(run: Path) -> Path:
    """The ``processed/`` folder of a run: beside it (``results/{dataset}/{variant}-s{seed}``) or
    beside its ``baselines/`` folder (``results/{dataset}/baselines/{name}``)."""
    for folder in (run.parent, run.parent.parent):
        if (folder / "processed" / "users.parquet").is_file():
            return folder / "processed"
    raise RunError(
        f"{run}: no processed/ folder beside it or beside its parent; a run lies in results/{{dataset}}/ "
        "(results/{dataset}/baselines/ for a baseline), where the data stages write processed/"
    )


def find_uid(users: pd.DataFrame, user: str | None = None, uid: int | None = None) -> int:
    """The uid of an original user id (``user``) or a uid as given: never one taken for the other."""
    if uid is not None:
        if not 0 <= uid < len(users):
            raise UnknownUserError(f"uid {uid} is not in this dataset (uids 0..{len(users) - 1})")
        return uid
    match = users.index[users["user_id"] == user]
    if len(match) == 0:
        hint = ""
        if user is not None and user.isdecimal() and int(user) < len(users):
            hint = f" To ask for uid {int(user)}, use --uid {int(user)}."
        raise UnknownUserError(
            f"user {user!r} is not an original user id of this dataset ({len(users)} users).{hint} "
            "New users have no entity token: the model can only rank items for users it was trained on."
        )
    return int(users.loc[match[0], "uid"])


def recommendations_for(
    run: Path, user: str | None = None, top: int = 10, uid: int | None = None
) -> tuple[int, str, pd.DataFrame]:
    """Top items of one user (an original user id, or ``uid``) from a run's recommendations."""
    from llm4rec.data.preprocess import data_fingerprint, recommendations_fingerprint

    run = Path(run)
    if not run.is_dir():
        raise RunError(f"--run {run}: no such folder{_runs_near(run)}")
    rec_path = run / "recommendations.parquet"
    if not rec_path.is_file():
        raise RunError(f"{rec_path} does not exist: run the workflow's evaluate stage for this run first")
    processed = processed_folder(run)
    stamp = recommendations_fingerprint(rec_path)
    if stamp is None:
        print(
            f"note: {rec_path} records no data fingerprint (written before runs were stamped): "
            f"not checked against {processed}",
            file=sys.stderr,
        )
    elif stamp != data_fingerprint(processed):
        raise RunError(
            f"{run} ranks other data than {processed} (a run of another dataset, or the data was preprocessed "
            "again since): run the workflow again to evaluate it on this data"
        )
    users = pd.read_parquet(processed / "users.parquet")
    uid = find_uid(users, user, uid)
    recs = pd.read_parquet(rec_path, filters=[("uid", "==", uid)])
    if recs.empty:
        raise UnknownUserError(f"user {uid} has no recommendations in {rec_path} (no test items to evaluate)")
    items = pd.read_parquet(processed / "items.parquet", columns=["iid", "item_id", "title"])
    recs = recs.sort_values("rank").head(top).merge(items, on="iid", how="left")
    return uid, str(users.loc[uid, "user_id"]), recs[["rank", "iid", "item_id", "title", "score"]]


def _runs_near(run: Path) -> str:
    """Which runs the parent folder holds, to spot a typo."""
    parent = run.parent if str(run.parent) else Path(".")
    if not parent.is_dir():
        return f" (nor is {parent})"
    runs = sorted(d.name for d in parent.iterdir() if (d / "recommendations.parquet").is_file())
    return f" (runs in {parent}: {', '.join(runs)})" if runs else ""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of items")
    return value


def _uid(text: str) -> int:
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"{text!r} is not a uid (0, 1, 2, ...)")
    return int(text)


def _recommend(args: argparse.Namespace) -> int:
    try:
        uid, user_id, recs = recommendations_for(args.run, args.user, args.top, uid=args.uid)
    except (UnknownUserError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"top {len(recs)} items for user_{uid} ({user_id}):")
    print(f"{'rank':>4}  {'iid':<11} {'item_id':<14} {'score':>9}  title")
    for r in recs.itertuples(index=False):
        title = r.title if isinstance(r.title, str) else "(no title)"
        print(f"{r.rank:>4}  item_{r.iid:<6} {r.item_id:<14} {r.score:9.4f}  {title}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from llm4rec.data.demo import DEMO, beauty_sized, write_raw

    settings = beauty_sized(args.scale) if args.scale else DEMO
    paths = write_raw(Path(args.out), settings)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from llm4rec import __version__

    ap = argparse.ArgumentParser(prog="llm4rec", description=__doc__)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="print one user's top items with titles")
    rec.add_argument(
        "--run",
        type=Path,
        required=True,
        help="a run folder: results/{dataset}/{variant}-s{seed} or results/{dataset}/baselines/{name}",
    )
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the original user id, as in the data (a number too is taken as an id)")
    who.add_argument("--uid", type=_uid, help="the user's number in the processed data (0..U-1), instead of --user")
    rec.add_argument("--top", type=_positive, default=10, help="how many items to print (default 10)")
    rec.set_defaults(func=_recommend)
    demo = sub.add_parser("demo-data", help="write synthetic raw Amazon-format files")
    demo.add_argument(
        "--out", required=True, help="folder to write reviews.json.gz and meta.json.gz to (made if missing)"
    )
    demo.add_argument("--scale", type=int, default=0, help="0: the committed demo; N: N x Amazon Beauty size")
    demo.set_defaults(func=_demo_data)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
