"""Second-order connection groups: items that share a brand or a category (docs/method.md 3.8).

Groups come from item metadata only (no interactions, so nothing from val/test can leak in):

* brand: items with the same cleaned, non-empty brand;
* category: every cleaned, non-empty entry of an item's category list is a group key (an item
  that repeats a category counts once);
* a group of one item is dropped; a category held by more than ``max_group_frac`` of all items
  (the root, e.g. "Beauty" in Amazon Beauty; the seed hard-coded it) says nothing and is dropped
  (brands are never dropped for size);
* a group larger than ``max_items_per_prompt`` is shuffled and cut into ``ceil(n / k)`` chunks
  whose sizes differ by at most one, so no chunk is a near-empty tail. The shuffle of each group
  uses its own generator seeded by ``(seed, sha256(kind, value))``: one group's change never
  reshuffles another. With ``k >= 3`` every chunk has at least 2 items; with ``k = 2`` an odd
  group leaves a one-item chunk, which is dropped.

Rows are sorted by kind ("brand" before "category"), value, then chunk; ``item_ids`` inside a
row are ascending.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [("kind", pa.string()), ("value", pa.string()), ("chunk", pa.int32()), ("item_ids", pa.list_(pa.int64()))]
)


def _clean_keys(values: pd.Series) -> pd.Series:
    """Non-empty strings only (None, NaN and blank strings carry no group)."""
    s = values.dropna()
    s = s[s.map(lambda v: isinstance(v, str))].str.strip()
    return s[s != ""]


def _group_seed(seed: int, kind: str, value: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{kind}\x00{value}".encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _chunks(items: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    if len(items) <= k:
        return [items]
    parts = np.array_split(rng.permutation(items), -(-len(items) // k))
    return [np.sort(p) for p in parts if len(p) >= 2]


def build_second_order(
    items: pd.DataFrame, max_group_frac: float = 0.5, max_items_per_prompt: int = 32, seed: int = 98765
) -> pd.DataFrame:
    """Brand and category groups of items, cut into prompt-sized chunks.

    ``items`` has ``iid`` (int), ``brand`` (str or None, cleaned) and ``categories`` (list of
    cleaned str, or None). Returns columns ``kind``, ``value``, ``chunk`` and ``item_ids``.
    """
    if max_items_per_prompt < 2:
        raise ValueError("max_items_per_prompt must be >= 2 (a group states at least two items)")
    if not 0 < max_group_frac <= 1:
        raise ValueError("max_group_frac must be in (0, 1]")
    if items["iid"].duplicated().any():
        raise ValueError("duplicate iid in items")
    n_items = len(items)
    iid = items["iid"].astype(np.int64)

    brand = _clean_keys(pd.Series(items["brand"].to_numpy(), index=iid.to_numpy()))
    cats = pd.Series(items["categories"].to_numpy(), index=iid.to_numpy())
    cats = cats[cats.map(lambda v: v is not None and not (isinstance(v, float) and np.isnan(v)))]
    cats = _clean_keys(cats.map(lambda v: [v] if isinstance(v, str) else list(v)).explode())

    pairs = pd.concat(
        [
            pd.DataFrame({"kind": "brand", "value": brand.to_numpy(), "iid": brand.index.to_numpy()}),
            pd.DataFrame({"kind": "category", "value": cats.to_numpy(), "iid": cats.index.to_numpy()}),
        ],
        ignore_index=True,
    ).drop_duplicates()
    size = pairs.groupby(["kind", "value"])["iid"].transform("size")
    too_common = (pairs["kind"] == "category") & (size > max_group_frac * n_items)
    pairs = pairs[(size >= 2) & ~too_common].sort_values(["kind", "value", "iid"], kind="stable")

    rows = []
    for (kind, value), grp in pairs.groupby(["kind", "value"], sort=True):
        members = grp["iid"].to_numpy(dtype=np.int64)
        for c, part in enumerate(_chunks(members, max_items_per_prompt, _group_seed(seed, kind, value))):
            rows.append((kind, value, c, [int(x) for x in part]))
    return pd.DataFrame(rows, columns=["kind", "value", "chunk", "item_ids"]).astype(
        {"kind": str, "value": str, "chunk": np.int32}
    )


def save_second_order(groups: pd.DataFrame, path: str | Path) -> Path:
    """Write the groups as parquet with a fixed schema (also when there are no groups)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(groups[["kind", "value", "chunk", "item_ids"]], schema=SCHEMA, preserve_index=False)
    pq.write_table(table, p)
    return p
