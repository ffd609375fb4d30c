"""docs/method.md section 2: rating filter, duplicate collapse, k-core, the seed's ids and split.

Input is the canonical schema (``interim/reviews.parquet``, ``interim/items.parquet``, see
the README); output is the processed tables every later stage reads. The reader of those
tables (``load_processed``) and the matrices derived from them live here too, beside the
writer, so that their layout is stated once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from llm4rec.data.text import clean_list, clean_text

log = logging.getLogger(__name__)

SPLIT_SEED = 98765


class EmptyDatasetError(ValueError):
    """Nothing survived filtering; the message says which step emptied the data."""


@dataclass(frozen=True)
class PreprocessSettings:
    min_rating: float = 3.0  # keep rating > min_rating
    user_core: int = 5
    item_core: int = 5
    val_frac: float = 0.1
    seed: int = SPLIT_SEED


def k_core(pairs: pd.DataFrame, user_core: int, item_core: int) -> pd.DataFrame:
    """Iteratively drop users and items below their minimum degree until none is left."""
    while True:
        u_deg = pairs["user_id"].map(pairs["user_id"].value_counts())
        i_deg = pairs["item_id"].map(pairs["item_id"].value_counts())
        keep = (u_deg >= user_core) & (i_deg >= item_core)
        if keep.all():
            return pairs
        pairs = pairs[keep.to_numpy()]


def _assign_ids(kept: pd.DataFrame, core: pd.DataFrame, seed: int) -> tuple[list, np.ndarray, list]:
    """The seed's id procedure.

    Users: order of first kept review in file order (among rating-filtered reviews, as the
    seed's insertion-ordered dict), restricted to k-core survivors, shuffled by
    ``random.Random(seed)``. Items: first appearance walking the shuffled users'
    chronological lists.
    """
    survivors = set(core["user_id"].unique())
    first_seen = kept["user_id"].drop_duplicates()
    users = [u for u in first_seen if u in survivors]
    random.Random(seed).shuffle(users)
    uid_of = pd.Series(np.arange(len(users)), index=pd.Index(users, dtype=object))
    chrono = core.assign(uid=core["user_id"].map(uid_of).to_numpy())
    chrono = chrono.sort_values(["uid", "timestamp", "line"], kind="stable", na_position="last")
    item_order = chrono["item_id"].drop_duplicates().tolist()
    return users, chrono, item_order


def split_users(chrono: pd.DataFrame, n_users: int, val_frac: float, seed: int) -> np.ndarray:
    """Per user in id order, one ``np.random.RandomState(seed)`` shuffles the chronological list.

    ``n_val = max(1, int(val_frac * n))``, ``n_test = n_val``; after the shuffle the first
    ``n - 2 n_val`` items are train, the next ``n_val`` val and the last ``n_val`` test.
    Returns the split label per row of ``chrono`` (which is sorted by uid, then time).
    """
    rng = np.random.RandomState(seed)
    counts = np.bincount(chrono["uid"].to_numpy(), minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    labels = np.empty(len(chrono), dtype=object)
    for u in range(n_users):
        n = int(counts[u])
        perm = np.arange(n)
        rng.shuffle(perm)
        n_val = max(1, int(val_frac * n))
        lab = np.array(["train"] * (n - 2 * n_val) + ["val"] * n_val + ["test"] * n_val, dtype=object)
        labels[starts[u] + perm] = lab
    return labels


def clean_items(items: pd.DataFrame) -> pd.DataFrame:
    """Last record of an asin wins; every text field cleaned alike (docs/method.md 2.7)."""
    items = items.sort_values("line", kind="stable").drop_duplicates("item_id", keep="last")
    out = pd.DataFrame({"item_id": items["item_id"].to_numpy()})
    for col in ("title", "brand", "description"):
        out[col] = [clean_text(v) for v in items[col]] if col in items else None
    out["categories"] = [clean_list(v) for v in items["categories"]] if "categories" in items else [[]] * len(out)
    return out


def preprocess(reviews: pd.DataFrame, items: pd.DataFrame, settings: PreprocessSettings = PreprocessSettings()) -> dict:
    """Return ``{"users", "items", "interactions", "stats"}`` per docs/method.md section 2."""
    s = settings
    reviews = (
        reviews.sort_values("line", kind="stable")
        if "line" in reviews
        else reviews.assign(line=np.arange(1, len(reviews) + 1))
    )
    stats: dict = {"steps": {"reviews": _counts(reviews)}}
    ratings = reviews["rating"].astype(float)
    kept = reviews[ratings > s.min_rating]
    stats["steps"]["rating_filter"] = _counts(kept)
    if kept.empty and len(reviews):
        raise EmptyDatasetError(rating_filter_message(ratings, s.min_rating))
    dedup = (
        kept.sort_values(["timestamp", "line"], kind="stable", na_position="last")
        .drop_duplicates(["user_id", "item_id"], keep="first")
        .sort_values("line", kind="stable")
    )
    stats["steps"]["duplicates_collapsed"] = _counts(dedup)
    stats["duplicates_removed"] = int(len(kept) - len(dedup))
    core = k_core(dedup, s.user_core, s.item_core)
    stats["steps"]["k_core"] = _counts(core)
    if core.empty:
        raise EmptyDatasetError(
            f"nothing survives the {s.user_core}/{s.item_core}-core: {len(dedup)} interactions of "
            f"{dedup['user_id'].nunique()} users and {dedup['item_id'].nunique()} items before it. "
            "Lower preprocess.user_core / preprocess.item_core in the config (e.g. 3), or use a larger dataset."
        )

    users, chrono, item_order = _assign_ids(kept, core, s.seed)
    n_users, n_items = len(users), len(item_order)
    iid_of = pd.Series(np.arange(n_items), index=pd.Index(item_order, dtype=object))
    chrono["iid"] = chrono["item_id"].map(iid_of).to_numpy()
    chrono["split"] = split_users(chrono, n_users, s.val_frac, s.seed)
    is_train = chrono["split"].to_numpy() == "train"
    review_text = chrono["review_text"] if "review_text" in chrono else pd.Series([None] * len(chrono))
    interactions = pd.DataFrame(
        {
            "uid": chrono["uid"].to_numpy(np.int64),
            "iid": chrono["iid"].to_numpy(np.int64),
            "rating": chrono["rating"].to_numpy(np.float64),
            "timestamp": chrono["timestamp"].astype("Int64").to_numpy(),
            "split": pd.Categorical(chrono["split"], categories=["train", "val", "test"]),
            # Review texts of val/test pairs never reach training (docs/method.md 2.7).
            "review_text": [clean_text(t) if tr else None for t, tr in zip(review_text, is_train)],
        }
    )

    meta = clean_items(items)
    meta = meta[meta["item_id"].isin(iid_of.index)]
    items_out = pd.DataFrame({"iid": np.arange(n_items, dtype=np.int64), "item_id": item_order})
    items_out = items_out.merge(meta, on="item_id", how="left")
    for col in ("title", "brand", "description"):
        items_out[col] = items_out[col].astype(object).where(items_out[col].notna(), None)
    items_out["categories"] = [c if isinstance(c, list) else [] for c in items_out["categories"]]
    users_out = pd.DataFrame({"uid": np.arange(n_users, dtype=np.int64), "user_id": users})

    stats.update(_split_stats(interactions, n_users, n_items))
    stats["items_without_metadata"] = int((~items_out["item_id"].isin(meta["item_id"])).sum())
    stats["warnings"] = metadata_warnings(items, item_order)
    for warning in stats["warnings"]:
        log.warning("%s", warning)
    stats["settings"] = {
        "min_rating": s.min_rating,
        "user_core": s.user_core,
        "item_core": s.item_core,
        "val_frac": s.val_frac,
        "seed": s.seed,
    }
    return {"users": users_out, "items": items_out, "interactions": interactions, "stats": stats}


def rating_filter_message(ratings: pd.Series, min_rating: float) -> str:
    """Why the rating filter kept nothing, and the setting that decides it."""
    seen = np.unique(ratings.to_numpy(np.float64))
    shown = ", ".join(f"{v:g}" for v in seen[:6]) + (", ..." if len(seen) > 6 else "")
    message = (
        f"the rating filter kept nothing: none of the {len(ratings)} reviews has a rating above "
        f"preprocess.min_rating {min_rating:g} (ratings found: {shown})."
    )
    if set(seen) <= {0.0, 1.0}:
        message += (
            " Ratings of 0 and 1 look like implicit feedback (true/false is read as 1/0): set "
            "preprocess.min_rating: 0 to keep the 1s."
        )
    else:
        message += f" Lower preprocess.min_rating below {seen.max():g}, or check the rating column."
    return message


def metadata_warnings(items: pd.DataFrame, item_order: list) -> list[str]:
    """Say when no kept item has metadata: an empty item table, or ids that match none.

    Both leave the prompts without titles, brands or categories and train anyway, so the
    user must hear of it; mismatched ids (``"1000.0"`` against ``"1000"``) are shown.
    """
    if len(items) == 0:
        return [
            f"the item table is empty: none of the {len(item_order)} items has a title, brand, "
            "categories or description (check the meta / items file)"
        ]
    known = pd.Index(items["item_id"].dropna().unique())
    if not known.isin(item_order).any():
        return [
            f"none of the {len(known)} item ids of the item table matches one of the "
            f"{len(item_order)} reviewed items (item table: {list(known[:3])}, reviews: "
            f"{list(item_order[:3])}): no item has metadata; check that both tables use the same ids"
        ]
    return []


def _counts(df: pd.DataFrame) -> dict:
    return {"interactions": int(len(df)), "users": int(df["user_id"].nunique()), "items": int(df["item_id"].nunique())}


def _split_stats(inter: pd.DataFrame, n_users: int, n_items: int) -> dict:
    per_split = inter["split"].value_counts().reindex(["train", "val", "test"], fill_value=0)
    train_items = set(inter.loc[inter["split"] == "train", "iid"])
    cold = {sp: int(len(set(inter.loc[inter["split"] == sp, "iid"]) - train_items)) for sp in ("val", "test")}
    n = len(inter)
    return {
        "users": n_users,
        "items": n_items,
        "interactions": int(n),
        "per_split": {k: int(v) for k, v in per_split.items()},
        "sparsity": float(1.0 - n / (n_users * n_items)),
        "items_without_train_interaction": cold,
    }


def write_processed(result: dict, out_dir: Path) -> None:
    """Write the processed tables and ``stats.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("users", "items", "interactions"):
        result[name].to_parquet(out_dir / f"{name}.parquet", index=False)
    (out_dir / "stats.json").write_text(json.dumps(result["stats"], indent=2) + "\n")


@dataclass
class Processed:
    """The processed tables as the later stages read them: sizes and interactions.

    ``interactions`` holds at least ``uid``, ``iid`` and ``split``; the per-user train lists
    and the per-split matrices are derived once, when first asked for.
    """

    n_users: int
    n_items: int
    interactions: pd.DataFrame

    @cached_property
    def train_items(self) -> list[np.ndarray]:
        """Each user's train items, ascending id."""
        return train_items_by_user(self.interactions, self.n_users)

    @cached_property
    def matrices(self) -> dict[str, sp.csr_matrix]:
        """Binary users x items matrices of the train, val and test splits."""
        return split_matrices(self.interactions, self.n_users, self.n_items)


def processed_sizes(folder: str | Path) -> tuple[int, int]:
    """(users, items) of a ``processed/`` folder, from its user and item tables."""
    folder = Path(folder)
    return (
        len(pd.read_parquet(folder / "users.parquet", columns=["uid"])),
        len(pd.read_parquet(folder / "items.parquet", columns=["iid"])),
    )


DATA_KEY = b"llm4rec.data"


def data_fingerprint(folder: str | Path) -> str:
    """sha256 of the user and item ids in uid / iid order: the identity of a ``processed/``
    folder as a run's numbers see it (a run of other data, or of data preprocessed again, maps
    its uids and iids to other users and items)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for table, column in (("users", "user_id"), ("items", "item_id")):
        ids = pd.read_parquet(folder / f"{table}.parquet", columns=[column])[column]
        digest.update(f"{table}:{len(ids)}\n".encode() + "\0".join(ids.astype(str)).encode() + b"\n")
    return digest.hexdigest()


def write_recommendations(top_k: pd.DataFrame, path: str | Path, processed: str | Path) -> None:
    """``recommendations.parquet``, stamped with the fingerprint of the data it ranks."""
    table = pa.Table.from_pandas(top_k, preserve_index=False)
    stamp = json.dumps({"data_sha256": data_fingerprint(processed)}).encode()
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), DATA_KEY: stamp}), path)


def recommendations_fingerprint(path: str | Path) -> str | None:
    """The data fingerprint a ``recommendations.parquet`` was written with (None: written before stamps)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[DATA_KEY])["data_sha256"] if DATA_KEY in metadata else None


def load_processed(folder: str | Path, columns: Iterable[str] = ("uid", "iid", "split")) -> Processed:
    """The user and item counts and the interactions (``columns`` of them) of a ``processed/`` folder."""
    n_users, n_items = processed_sizes(folder)
    return Processed(n_users, n_items, pd.read_parquet(Path(folder) / "interactions.parquet", columns=list(columns)))


def train_items_by_user(interactions: pd.DataFrame, n_users: int) -> list[np.ndarray]:
    """Each user's train items, ascending id (empty arrays for users without any)."""
    tr = interactions.loc[interactions["split"] == "train", ["uid", "iid"]].to_numpy(np.int64)
    tr = tr[np.lexsort((tr[:, 1], tr[:, 0]))]
    cuts = np.searchsorted(tr[:, 0], np.arange(n_users + 1))
    return [tr[cuts[u] : cuts[u + 1], 1] for u in range(n_users)]


def interaction_matrix(
    interactions: pd.DataFrame, n_users: int, n_items: int, splits: Iterable[str] = ("train",), dtype: type = np.float32
) -> sp.csr_matrix:
    """Binary users x items CSR of the rows in ``splits`` (a repeated pair counts once).

    Refuses split values other than train/val/test and ids outside ``n_users``/``n_items``.
    """
    unknown = set(interactions["split"].astype(str).unique()) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"unknown split values {sorted(unknown)}")
    rows = interactions[interactions["split"].isin(list(splits))]
    uid = rows["uid"].to_numpy(dtype=np.int64)
    iid = rows["iid"].to_numpy(dtype=np.int64)
    if len(uid) and (uid.min() < 0 or uid.max() >= n_users or iid.min() < 0 or iid.max() >= n_items):
        raise ValueError("uid/iid out of range for n_users/n_items")
    m = sp.csr_matrix((np.ones(len(uid), dtype=dtype), (uid, iid)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def split_matrices(interactions: pd.DataFrame, n_users: int, n_items: int) -> dict[str, sp.csr_matrix]:
    """Binary float32 users x items CSR of each of train, val and test (present even when empty)."""
    missing = {"uid", "iid", "split"} - set(interactions.columns)
    if missing:
        raise ValueError(f"interactions lack columns {sorted(missing)}")
    return {
        name: interaction_matrix(interactions, n_users, n_items, splits=(name,)) for name in ("train", "val", "test")
    }
