"""Second-order groups on hand-made items: grouping, dropping and seeded chunking."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from llm4rec.graph.second_order import build_second_order, save_second_order


def _items():
    return pd.DataFrame(
        {
            "iid": [0, 1, 2, 3, 4, 5, 6, 7],
            "brand": ["Acme", "Acme", "Solo", None, "Bolt", "Bolt", "Bolt", ""],
            "categories": [
                ["Beauty", "Skin", "Face"],
                ["Beauty", "Skin", "Skin"],  # repeated category counts once
                ["Beauty", "Hair"],
                ["Beauty", "Hair", "Face"],
                ["Beauty"],
                None,
                np.array(["Beauty", "Nails"]),  # parquet gives arrays
                [],
            ],
        }
    )


def _rows(df):
    return [(k, v, c, list(ids)) for k, v, c, ids in df[["kind", "value", "chunk", "item_ids"]].itertuples(index=False)]


def test_groups_singletons_and_root_dropped():
    out = build_second_order(_items())
    assert list(out.columns) == ["kind", "value", "chunk", "item_ids"]
    # "Beauty" is held by 6 of 8 items (> 0.5): dropped. "Solo" and "Nails" are singletons.
    assert _rows(out) == [
        ("brand", "Acme", 0, [0, 1]),
        ("brand", "Bolt", 0, [4, 5, 6]),
        ("category", "Face", 0, [0, 3]),
        ("category", "Hair", 0, [2, 3]),
        ("category", "Skin", 0, [0, 1]),
    ]


def test_root_kept_when_fraction_allows_it():
    out = build_second_order(_items(), max_group_frac=0.8)
    assert ("category", "Beauty", 0, [0, 1, 2, 3, 4, 6]) in _rows(out)
    # exactly at the fraction is kept: 6/8 = 0.75
    assert ("category", "Beauty", 0, [0, 1, 2, 3, 4, 6]) in _rows(build_second_order(_items(), max_group_frac=0.75))


def _expected_chunks(members, k, seed, kind, value):
    """The documented procedure, written out: per-group generator, permutation, balanced split."""
    digest = hashlib.sha256(f"{kind}\x00{value}".encode()).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
    perm = rng.permutation(np.asarray(members, dtype=np.int64))
    n_chunks = -(-len(members) // k)
    sizes = [len(members) // n_chunks + (1 if c < len(members) % n_chunks else 0) for c in range(n_chunks)]
    out, start = [], 0
    for s in sizes:
        out.append(sorted(int(x) for x in perm[start : start + s]))
        start += s
    return out


def test_chunking_is_seeded_balanced_and_exact():
    n = 23
    items = pd.DataFrame(
        {
            "iid": np.arange(100, 100 + n),
            "brand": ["Big"] * n,
            "categories": [["Cat A"] if i < 7 else ["Other"] for i in range(n)],
        }
    )
    out = build_second_order(items, max_items_per_prompt=5, seed=42)
    big = out[out["value"] == "Big"]
    assert list(big["chunk"]) == [0, 1, 2, 3, 4]
    chunks = [list(x) for x in big["item_ids"]]
    assert chunks == _expected_chunks(list(range(100, 100 + n)), 5, 42, "brand", "Big")
    assert sorted(len(c) for c in chunks) == [4, 4, 5, 5, 5]
    assert sorted(x for c in chunks for x in c) == list(range(100, 100 + n))
    cat_a = out[out["value"] == "Cat A"]
    assert [list(x) for x in cat_a["item_ids"]] == _expected_chunks(list(range(100, 107)), 5, 42, "category", "Cat A")
    assert [len(x) for x in cat_a["item_ids"]] == [4, 3]
    # "Other" (16 of 23 items) is over half of all items: dropped.
    assert "Other" not in set(out["value"])
    same = build_second_order(items, max_items_per_prompt=5, seed=42)
    assert _rows(same) == _rows(out)
    other_seed = build_second_order(items, max_items_per_prompt=5, seed=43)
    assert _rows(other_seed) != _rows(out)


def test_one_group_change_does_not_reshuffle_another():
    n = 20
    items = pd.DataFrame(
        {"iid": np.arange(n), "brand": ["B1"] * 10 + ["B2"] * 10, "categories": [[] for _ in range(n)]}
    )
    base = build_second_order(items, max_items_per_prompt=4)
    items.loc[0, "brand"] = "B3"
    changed = build_second_order(items, max_items_per_prompt=4)
    assert _rows(base[base["value"] == "B2"]) == _rows(changed[changed["value"] == "B2"])


def test_pairs_of_two_drop_odd_tail_and_validation():
    items = pd.DataFrame({"iid": [0, 1, 2], "brand": ["X"] * 3, "categories": [None] * 3})
    out = build_second_order(items, max_items_per_prompt=2)
    assert [len(x) for x in out["item_ids"]] == [2]
    with pytest.raises(ValueError):
        build_second_order(items, max_items_per_prompt=1)
    with pytest.raises(ValueError):
        build_second_order(pd.concat([items, items]))


def test_save_roundtrip_and_empty(tmp_path):
    out = build_second_order(_items())
    p = save_second_order(out, tmp_path / "graph" / "second_order.parquet")
    back = pq.read_table(p).to_pandas()
    assert _rows(back) == _rows(out)
    empty = build_second_order(pd.DataFrame({"iid": [0], "brand": ["A"], "categories": [["c"]]}))
    assert len(empty) == 0
    q = save_second_order(empty, tmp_path / "empty.parquet")
    assert pq.read_table(q).schema.field("item_ids").type.value_type.bit_width == 64
