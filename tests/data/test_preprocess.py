"""Preprocess (docs/method.md section 2) against independent plain-Python implementations."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from llm4rec.data.preprocess import EmptyDatasetError, PreprocessSettings, k_core, preprocess, split_matrices
from llm4rec.data.text import clean_text


def brute_force_core(pairs: set[tuple[str, str]], ku: int, ki: int) -> set[tuple[str, str]]:
    """Remove one offending node at a time until none is left."""
    pairs = set(pairs)
    while True:
        udeg, ideg = {}, {}
        for u, i in pairs:
            udeg[u] = udeg.get(u, 0) + 1
            ideg[i] = ideg.get(i, 0) + 1
        bad_u = next((u for u, d in udeg.items() if d < ku), None)
        bad_i = next((i for i, d in ideg.items() if d < ki), None)
        if bad_u is None and bad_i is None:
            return pairs
        pairs = {(u, i) for u, i in pairs if u != bad_u and i != bad_i}


@pytest.mark.parametrize("seed", range(8))
def test_k_core_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    users = rng.integers(0, int(rng.integers(10, 60)), n)
    items = rng.integers(0, int(rng.integers(10, 60)), n)
    df = pd.DataFrame({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items]}).drop_duplicates()
    ku, ki = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    got = set(map(tuple, k_core(df, ku, ki)[["user_id", "item_id"]].to_numpy().tolist()))
    assert got == brute_force_core(set(map(tuple, df.to_numpy().tolist())), ku, ki)


def reference_preprocess(reviews: pd.DataFrame, min_rating=3.0, core=5, seed=98765, val_frac=0.1):
    """docs/method.md section 2 written out as the seed code would, with dicts and loops."""
    kept = [r for r in reviews.sort_values("line").to_dict("records") if float(r["rating"]) > min_rating]
    first_user_order: dict[str, None] = {}
    for r in kept:
        first_user_order.setdefault(r["user_id"], None)
    best: dict[tuple, dict] = {}
    for r in kept:
        key = (r["user_id"], r["item_id"])
        if key not in best or (r["timestamp"], r["line"]) < (best[key]["timestamp"], best[key]["line"]):
            best[key] = r
    pairs = brute_force_core(set(best), core, core)
    users = [u for u in first_user_order if any(p[0] == u for p in pairs)]
    random.Random(seed).shuffle(users)
    by_user = {
        u: sorted((best[p] for p in pairs if p[0] == u), key=lambda r: (r["timestamp"], r["line"])) for u in users
    }
    item_ids: dict[str, int] = {}
    for u in users:
        for r in by_user[u]:
            item_ids.setdefault(r["item_id"], len(item_ids))
    rng = np.random.RandomState(seed)
    rows = []
    for uid, u in enumerate(users):
        chron = [item_ids[r["item_id"]] for r in by_user[u]]
        rng.shuffle(chron)
        n_val = max(1, int(val_frac * len(chron)))
        n_train = len(chron) - 2 * n_val
        for k, iid in enumerate(chron):
            split = "train" if k < n_train else ("val" if k < n_train + n_val else "test")
            rows.append((uid, iid, split))
    return users, item_ids, sorted(rows)


def random_reviews(seed: int, n_users=40, n_items=30, n=900) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "line": np.arange(1, n + 1),
            "user_id": [f"U{u}" for u in rng.integers(0, n_users, n)],
            "item_id": [f"I{i}" for i in rng.integers(0, n_items, n)],
            "rating": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.05, 0.05, 0.1, 0.3, 0.5]),
            "timestamp": rng.integers(0, 40, n) * 86400,  # whole days: many ties
            "review_text": [f"text {k} <b>bold</b> &amp; more" for k in range(n)],
        }
    )


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({"line": pd.Series([], dtype=int), "item_id": pd.Series([], dtype=str)})


@pytest.mark.parametrize("seed", range(6))
def test_ids_and_split_equal_reference(seed):
    reviews = random_reviews(seed)
    out = preprocess(reviews, empty_items())
    users, item_ids, rows = reference_preprocess(reviews)
    assert out["users"]["user_id"].tolist() == users
    assert out["items"]["item_id"].tolist() == list(item_ids)
    inter = out["interactions"]
    got = sorted(zip(inter["uid"].tolist(), inter["iid"].tolist(), inter["split"].astype(str).tolist()))
    assert got == rows


@pytest.mark.parametrize("seed", range(4))
def test_split_rule_text_and_cold_items(seed):
    reviews = random_reviews(seed, n_users=60, n_items=40, n=1500)
    out = preprocess(reviews, empty_items())
    inter = out["interactions"]
    for _, g in inter.groupby("uid"):
        n = len(g)
        n_val = max(1, int(0.1 * n))
        counts = g["split"].astype(str).value_counts()
        assert counts.get("val", 0) == n_val and counts.get("test", 0) == n_val
        assert counts.get("train", 0) == n - 2 * n_val >= 1
    evals = inter[inter["split"] != "train"]
    assert evals["review_text"].isna().all()
    assert inter.loc[inter["split"] == "train", "review_text"].str.contains("<b>|&amp;").sum() == 0
    train_items = set(inter.loc[inter["split"] == "train", "iid"])
    for split in ("val", "test"):
        expected = inter.loc[inter["split"] == split, "iid"].drop_duplicates()
        assert out["stats"]["items_without_train_interaction"][split] == int((~expected.isin(train_items)).sum())
    assert out["stats"]["sparsity"] == pytest.approx(1 - len(inter) / (out["stats"]["users"] * out["stats"]["items"]))


def test_hand_made_file():
    """Same-day reviews, a duplicate pair and a user whose first review is rated <= 3."""
    rows = []

    def add(user, item, rating, day, text=None):
        rows.append(
            {
                "line": len(rows) + 1,
                "user_id": user,
                "item_id": item,
                "rating": rating,
                "timestamp": day * 86400,
                "review_text": text or f"{user} on {item}",
            }
        )

    add("carol", "c", 2.0, 1)  # carol's first review is rated <= 3: not kept
    add("alice", "b", 5.0, 3)
    add("alice", "a", 4.0, 3)  # same day as b, later in the file
    add("bob", "a", 5.0, 2)
    add("carol", "a", 5.0, 5)
    for item in "cdef":
        add("alice", item, 5.0, 9)  # four items on one day
    add("alice", "b", 5.0, 1, "earlier duplicate")  # duplicate pair: the earlier timestamp wins
    for user, items in (("bob", "bcde"), ("carol", "bcdf")):
        for k, item in enumerate(items):
            add(user, item, 4.0, 10 + k)
    add("dave", "a", 5.0, 1)
    for k, item in enumerate("bcdef"):
        add("dave", item, 5.0, 2 + k)
    reviews = pd.DataFrame(rows)
    out = preprocess(reviews, empty_items(), PreprocessSettings(user_core=5, item_core=3))
    # Users by first kept review in file order: alice (line 2), bob, carol, dave (carol's
    # line 1 is rated 2: counting it would give dave, carol, bob, alice), then
    # random.Random(98765).shuffle:
    assert out["users"]["user_id"].tolist() == ["dave", "alice", "carol", "bob"]
    # dave is first and his chronological list is a (day 1), b, c, d, e, f.
    assert out["items"]["item_id"].tolist() == ["a", "b", "c", "d", "e", "f"]
    inter = out["interactions"]
    alice = inter[inter["uid"] == 1].sort_values(["timestamp", "iid"], kind="stable")
    # alice's duplicate of b collapsed to day 1 with its text; c..f share day 9.
    assert alice["iid"].tolist() == [1, 0, 2, 3, 4, 5]
    assert alice.iloc[0]["timestamp"] == 86400
    # ... and b is alice's test item (below), so its text is not kept.
    assert pd.isna(alice.iloc[0]["review_text"])
    assert alice.iloc[1]["review_text"] == "alice on a"
    # One RandomState(98765) over users in id order: dave [0..5] -> [4, 2, 1, 0, 3, 5],
    # then alice [1, 0, 2, 3, 4, 5] -> [2, 4, 5, 0, 3, 1]; train, then 1 val, then 1 test.
    expected = {
        0: {"train": [0, 1, 2, 4], "val": [3], "test": [5]},
        1: {"train": [0, 2, 4, 5], "val": [3], "test": [1]},
    }
    for uid, want in expected.items():
        rows_u = inter[inter["uid"] == uid]
        got = {s: sorted(rows_u.loc[rows_u["split"] == s, "iid"].tolist()) for s in ("train", "val", "test")}
        assert got == want
    assert out["stats"]["duplicates_removed"] == 1


def test_nothing_survives_names_the_fix():
    reviews = random_reviews(0, n_users=200, n_items=200, n=100)
    with pytest.raises(EmptyDatasetError, match="user_core"):
        preprocess(reviews, empty_items())


def test_items_last_record_wins_and_texts_are_clean():
    reviews = random_reviews(1)
    core_items = preprocess(reviews, empty_items())["items"]["item_id"].tolist()
    meta = pd.DataFrame(
        {
            "line": [1, 2, 3],
            "item_id": [core_items[0], core_items[1], core_items[0]],
            "title": ['<span class="a-size-medium a-color-secondary"', "Nice &amp; <i>shiny</i>", "Second  title"],
            "brand": ["Acme", " ", "Acme2"],
            "categories": [["Root"], ["Root", "Hair &amp; Care"], ["Root", "Skin"]],
            "description": ["old", "<p>Soft\n\n and <br/>warm</p>", "new"],
        }
    )
    items = preprocess(reviews, meta)["items"].set_index("item_id")
    first, second = items.loc[core_items[0]], items.loc[core_items[1]]
    assert first["title"] == "Second title" and first["brand"] == "Acme2" and first["description"] == "new"
    assert list(first["categories"]) == ["Root", "Skin"]
    assert second["title"] == "Nice & shiny" and second["brand"] is None
    assert list(second["categories"]) == ["Root", "Hair & Care"]
    assert second["description"] == "Soft and warm"
    assert items.loc[core_items[2], "title"] is None or pd.isna(items.loc[core_items[2], "title"])


@pytest.mark.parametrize("case", ["empty", "unmatched"])
def test_empty_or_unmatched_item_table_warns_in_stats_and_log(case, caplog):
    reviews = random_reviews(2)
    if case == "empty":
        items = empty_items()
    else:  # ids that went through a float column: "I3.0" never equals "I3"
        items = pd.DataFrame({"line": [1, 2], "item_id": ["I3.0", "I4.0"], "title": ["a", "b"]})
    with caplog.at_level("WARNING", logger="llm4rec.data.preprocess"):
        stats = preprocess(reviews, items)["stats"]
    assert stats["items_without_metadata"] == stats["items"]
    (warning,) = stats["warnings"]
    assert ("empty" in warning) if case == "empty" else ("'I3.0'" in warning and "same ids" in warning)
    assert [r.getMessage() for r in caplog.records] == [warning]


def test_matching_item_table_has_no_warning():
    reviews = random_reviews(3)
    items = pd.DataFrame({"line": [1], "item_id": ["I0"], "title": ["t"]})
    assert preprocess(reviews, items)["stats"]["warnings"] == []


@pytest.mark.parametrize(
    "raw,clean",
    [
        ('<span class="a-size-medium a-color-secondary"', None),
        ("Fly &amp;amp; Tyer", "Fly & Tyer"),
        (["a", "", "b <br> c"], "a b c"),
        ("&lt;b&gt;Bold&lt;/b&gt; text", "Bold text"),
        ("  ", None),
        ("Price < 5 and > 2", "Price < 5 and > 2"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_split_matrices():
    df = pd.DataFrame(
        {
            "uid": [0, 0, 1, 1, 2, 2],
            "iid": [0, 1, 1, 2, 0, 0],
            "split": ["train", "val", "train", "test", "train", "train"],
        }
    )
    mats = split_matrices(df, n_users=4, n_items=3)
    assert set(mats) == {"train", "val", "test"}
    assert all(m.shape == (4, 3) and m.format == "csr" for m in mats.values())
    np.testing.assert_array_equal(mats["train"].toarray(), [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mats["val"].toarray(), [[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mats["test"].toarray(), [[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="iid"):
        split_matrices(df, n_users=4, n_items=2)
    with pytest.raises(ValueError, match="split"):
        split_matrices(df.assign(split="dev"), n_users=4, n_items=3)


@pytest.mark.parametrize(
    ("ratings", "hint"),
    [([1.0, 2.0, 3.0], "Lower preprocess.min_rating below 3"), ([True, False], "set preprocess.min_rating: 0")],
)
def test_a_rating_filter_that_keeps_nothing_is_named_not_the_k_core(ratings, hint):
    """All ratings <= 3, or booleans read as 1/0: the error names the rating filter."""
    n = 60
    reviews = pd.DataFrame(
        {
            "user_id": [f"u{k % 6}" for k in range(n)],
            "item_id": [f"i{k % 10}" for k in range(n)],
            "rating": [ratings[k % len(ratings)] for k in range(n)],
            "timestamp": np.arange(n),
            "line": np.arange(1, n + 1),
        }
    )
    with pytest.raises(EmptyDatasetError) as info:
        preprocess(reviews, empty_items())
    message = str(info.value)
    assert message.startswith("the rating filter kept nothing") and "preprocess.min_rating 3" in message
    assert hint in message and "core" not in message
