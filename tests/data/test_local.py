"""Local tables: ids stay exact in every format, bad rows and bad bytes are named."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm4rec.data.convert import ConvertError
from llm4rec.data.local import import_local
from llm4rec.data.preprocess import PreprocessSettings, preprocess
from llm4rec.data.tables import SchemaError, read_table

BIG = 2**53  # above it, float64 merges neighbouring integers


def _interim(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / "reviews.parquet"), pd.read_parquet(out / "items.parquet")


def _items_parquet(path: Path, ids: pa.Array) -> Path:
    pq.write_table(pa.table({"item_id": ids, "title": [f"T{k}" for k in range(len(ids))]}), path)
    return path


def test_parquet_integer_ids_keep_identity_and_metadata(tmp_path):
    """250 distinct int64 ids above 2**53 (a null user makes pandas read them as floats)."""
    n = 250
    item_ids = [BIG + k for k in range(n)]
    users = pa.array([1000 + k % 7 if k else None for k in range(n)], pa.int64())
    pq.write_table(
        pa.table({"user_id": users, "item_id": pa.array(item_ids, pa.int64()), "rating": [5.0] * n}),
        tmp_path / "reviews.parquet",
    )
    _items_parquet(tmp_path / "items.parquet", pa.array(item_ids, pa.int64()))
    out = tmp_path / "interim"
    report = import_local(tmp_path / "reviews.parquet", tmp_path / "items.parquet", out, max_reject_frac=0.01)
    assert report["reviews"]["rejected"] == 1
    reviews, items = _interim(out)
    assert reviews["item_id"].tolist() == [str(i) for i in item_ids[1:]]
    assert set(reviews["user_id"]) == {str(1000 + k) for k in range(7)}
    assert items["item_id"].tolist() == [str(i) for i in item_ids]
    result = preprocess(reviews, items, PreprocessSettings(user_core=1, item_core=1))
    assert result["stats"]["items"] == n - 1
    assert result["stats"]["items_without_metadata"] == 0 and result["stats"]["warnings"] == []


def test_parquet_float_ids_with_nulls_become_integer_text(tmp_path):
    path = tmp_path / "reviews.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1000.0, None, 7.0], pa.float64()),
                "item_id": pa.array([1.0, 2.0, float("nan")], pa.float32()),
                "rating": [5.0, 4.0, 3.0],
            }
        ),
        path,
    )
    df = read_table(path)
    assert df["user_id"].tolist() == ["1000", None, "7"]
    assert df["item_id"].tolist() == ["1", "2", None]


@pytest.mark.parametrize("value", [1.5, float(BIG + 2), float("inf")])
def test_parquet_float_ids_that_are_not_exact_fail_naming_file_and_column(tmp_path, value):
    path = tmp_path / "reviews.parquet"
    pq.write_table(
        pa.table({"user_id": ["a", "b"], "item_id": pa.array([1.0, value], pa.float64()), "rating": [5.0, 4.0]}), path
    )
    with pytest.raises(SchemaError) as info:
        read_table(path)
    assert str(path) in str(info.value) and "'item_id'" in str(info.value)


def test_parquet_dictionary_and_bool_ids(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": pa.array(["007", "x", "007"]).dictionary_encode()}), path)
    assert read_table(path)["item_id"].tolist() == ["007", "x", "007"]
    pq.write_table(pa.table({"item_id": [True, False]}), path)
    with pytest.raises(SchemaError, match="'item_id' has type bool"):
        read_table(path)


def test_json_lines_big_integer_ids_and_a_null_stay_exact(tmp_path):
    rows = [
        {"user_id": BIG + 1, "item_id": 10**20, "rating": 5},
        {"user_id": BIG + 2, "item_id": 10**20 + 1, "rating": 4.5},
        {"user_id": None, "item_id": 3, "rating": 5},
        {"user_id": "007", "item_id": 4.0, "rating": "4"},
    ]
    reviews = tmp_path / "reviews.jsonl.gz"
    with gzip.open(reviews, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"item_id": i, "title": "t"}) for i in (10**20, 10**20 + 1, None)) + "\n")
    out = tmp_path / "interim"
    report = import_local(reviews, items, out, max_reject_frac=0.5)
    got, meta = _interim(out)
    assert got["user_id"].tolist() == [str(BIG + 1), str(BIG + 2), "007"]
    assert got["item_id"].tolist() == [str(10**20), str(10**20 + 1), "4"]
    assert got["rating"].tolist() == [5.0, 4.5, 4.0]
    assert meta["item_id"].tolist() == [str(10**20), str(10**20 + 1)]
    assert report["meta"] == {"path": str(items), "lines": 3, "rows": 2, "rejected": 1}
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in rejects] == [
        ("reviews", 3, "missing user_id"),
        ("meta", 3, "missing item_id"),
    ]


@pytest.mark.parametrize("value", ["1.5", "NaN", "[1]", "true"])
def test_json_lines_inexact_id_fails_naming_file_line_and_column(tmp_path, value):
    path = tmp_path / "reviews.jsonl"
    path.write_text(
        f'{{"user_id": "a", "item_id": "b", "rating": 5}}\n{{"user_id": "a", "item_id": {value}, "rating": 5}}\n'
    )
    with pytest.raises(SchemaError) as info:
        read_table(path)
    assert f"{path} line 2" in str(info.value) and "'item_id'" in str(info.value)


def test_csv_leading_zeros_and_number_like_ids_stay_text(tmp_path):
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("user_id,item_id,rating\n007,0042,5\n7,42,4\n1e3,1000.0,5\n")
    items = tmp_path / "items.tsv"
    items.write_text("item_id\ttitle\n0042\tforty-two\n42\tother\n")
    out = tmp_path / "interim"
    import_local(reviews, items, out)
    got, meta = _interim(out)
    assert got["user_id"].tolist() == ["007", "7", "1e3"]
    assert got["item_id"].tolist() == ["0042", "42", "1000.0"]
    assert meta["item_id"].tolist() == ["0042", "42"]


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.csv.gz", "reviews.jsonl"])
def test_non_utf8_table_names_file_line_and_offset(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        text = '{"user_id": "a", "item_id": "b", "rating": 5}\n{"user_id": "caf\xe9", "item_id": "b", "rating": 5}\n'
    else:
        text = "user_id,item_id,rating\na,b,5\ncaf\xe9,b,4\n"
    data = text.encode("latin-1")
    offset = data.index(b"\xe9")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(SchemaError) as info:
        read_table(path)
    message = str(info.value)
    assert str(path) in message and "not UTF-8" in message
    line = 2 if name.endswith(".jsonl") else 3
    assert f"line {line}, byte offset {offset}" in message and "0xe9" in message


def test_too_many_rejects_are_copied_where_the_message_says(tmp_path):
    n = 50
    reviews = pd.DataFrame({"user_id": [f"u{k}" for k in range(n)], "item_id": ["i"] * n, "rating": [5.0] * n})
    reviews.loc[[3, 9, 20], "rating"] = np.nan
    reviews.to_csv(tmp_path / "reviews.csv", index=False)
    (tmp_path / "items.csv").write_text("item_id,title\ni,t\n")
    copy = tmp_path / "logs" / "import_local.rejects.jsonl"
    with pytest.raises(ConvertError) as info:
        import_local(
            tmp_path / "reviews.csv",
            tmp_path / "items.csv",
            tmp_path / "interim",
            max_reject_frac=0.01,
            rejects_copy=copy,
        )
    message = str(info.value)
    assert "3 of 50 rows rejected" in message and str(copy.resolve()) in message
    kept = [json.loads(x) for x in copy.read_text().splitlines()]
    assert [r["line"] for r in kept] == [4, 10, 21]
    assert all(r["reason"] == "rating is not a finite number" for r in kept)
    import_local(
        tmp_path / "reviews.csv", tmp_path / "items.csv", tmp_path / "interim", max_reject_frac=0.1, rejects_copy=copy
    )
    assert not copy.exists()  # a later success leaves no stale evidence behind


def test_empty_tables_are_read_as_empty(tmp_path):
    (tmp_path / "reviews.csv").write_text("user_id,item_id,rating\nu,i,5\n")
    for name in ("items.jsonl", "items.csv"):
        (tmp_path / name).write_text("")
        report = import_local(tmp_path / "reviews.csv", tmp_path / name, tmp_path / "interim")
        assert report["meta"]["rows"] == 0
        assert pd.read_parquet(tmp_path / "interim" / "items.parquet").empty
    (tmp_path / "none.csv").write_text("user_id,item_id,rating\n")
    with pytest.raises(ConvertError, match="no usable review row"):
        import_local(tmp_path / "none.csv", tmp_path / "items.csv", tmp_path / "interim")


# --- timestamps ---------------------------------------------------------------------------


def _timed_reviews(n_users: int = 40, per_user: int = 8, seed: int = 3) -> pd.DataFrame:
    """Reviews whose file order is not their time order, so the split depends on the times."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{rng.integers(12)}", 5.0) for u in range(n_users) for _ in range(per_user)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    df["timestamp"] = 1_500_000_000 + rng.permutation(len(df)) * 3600
    return df


def _split_of(out: Path, items: Path, reviews: Path) -> pd.DataFrame:
    import_local(reviews, items, out)
    got, meta = _interim(out)
    result = preprocess(got, meta, PreprocessSettings(user_core=3, item_core=1))
    users, items_out = result["users"], result["items"]
    inter = result["interactions"]
    return pd.DataFrame(
        {
            "user": users["user_id"].to_numpy()[inter["uid"]],
            "item": items_out["item_id"].to_numpy()[inter["iid"]],
            "timestamp": inter["timestamp"],
            "split": inter["split"].astype(str),
        }
    )


@pytest.mark.parametrize("form", ["csv", "jsonl", "parquet"])
def test_iso_timestamps_give_the_split_of_unix_seconds(tmp_path, form):
    """ISO-8601 text (Z, an offset, none) and parquet timestamps mean the same seconds as integers."""
    reviews = _timed_reviews()
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f"i{k},t{k}\n" for k in range(12)))
    reviews.to_csv(tmp_path / "seconds.csv", index=False)
    expected = _split_of(tmp_path / "a", items, tmp_path / "seconds.csv")
    times = pd.to_datetime(reviews["timestamp"], unit="s", utc=True)
    text = times.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    text[::3] = times[::3].dt.tz_convert("Europe/Paris").map(lambda t: t.isoformat())  # +01:00 / +02:00
    text[1::3] = times[1::3].dt.strftime("%Y-%m-%d %H:%M:%S")  # no offset: UTC
    iso = reviews.assign(timestamp=text)
    path = tmp_path / f"iso.{form}"
    if form == "csv":
        iso.to_csv(path, index=False)
    elif form == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in iso.to_dict("records")))
    else:
        reviews.assign(timestamp=times).to_parquet(path)
    got = _split_of(tmp_path / "b", items, path)
    assert got["timestamp"].notna().all()
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize(
    ("form", "value", "shown"),
    [
        ("csv", "1600000000.5", "1600000000.5 is not a whole number of seconds"),
        ("csv", "1e30", "is not unix seconds of a year 1-9999"),
        ("csv", "Infinity", "timestamp is not a time: "),
        ("csv", "13/09/2020", "'13/09/2020'"),
        ("csv", "1600000000000", "1600000000000 is not unix seconds of a year 1-9999 (milliseconds?"),
        ("csv", "2020-09-13T12:26:41.25Z", "'2020-09-13T12:26:41.25Z' is not a whole number of seconds"),
        ("jsonl", "1e30", "is not unix seconds of a year 1-9999"),
        ("jsonl", "Infinity", "timestamp is not a time: inf"),
        ("jsonl", "1600000000.5", "1600000000.5 is not a whole number of seconds"),
        ("jsonl", "true", "timestamp is not a time: True"),
    ],
)
def test_a_timestamp_that_is_no_time_is_set_aside_with_line_and_value(tmp_path, form, value, shown):
    n = 200
    rows = [
        {"user_id": f"u{k % 20}", "item_id": f"i{k % 7}", "rating": 5, "timestamp": 1_600_000_000 + k} for k in range(n)
    ]
    path = tmp_path / f"reviews.{form}"
    if form == "csv":
        lines = ["user_id,item_id,rating,timestamp"] + [
            f"{r['user_id']},{r['item_id']},5,{r['timestamp']}" for r in rows
        ]
        lines[42] = f"u1,i1,5,{value}"
        path.write_text("\n".join(lines) + "\n")
    else:
        lines = [json.dumps(r) for r in rows]
        lines[41] = f'{{"user_id": "u1", "item_id": "i1", "rating": 5, "timestamp": {value}}}'
        path.write_text("\n".join(lines) + "\n")
    (tmp_path / "items.csv").write_text("item_id\ni1\n")
    out = tmp_path / "interim"
    report = import_local(path, tmp_path / "items.csv", out, max_reject_frac=0.01)
    assert report["reviews"]["rejected"] == 1 and report["reasons"] == {"timestamp is not a time": 1}
    (reject,) = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 42 and reject["file"] == "reviews"
    assert reject["reason"].startswith("timestamp is not a time: ") and shown in reject["reason"]
    got = pd.read_parquet(out / "reviews.parquet")
    assert len(got) == n - 1 and got["timestamp"].notna().all()


def test_timestamps_that_are_all_unreadable_stop_the_import_naming_file_line_and_value(tmp_path):
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("user_id,item_id,rating,timestamp\na,x,5,09 13 2020\nb,x,5,09 14 2020\n")
    (tmp_path / "items.csv").write_text("item_id\nx\n")
    with pytest.raises(ConvertError) as info:
        import_local(reviews, tmp_path / "items.csv", tmp_path / "interim")
    message = str(info.value)
    assert str(reviews) in message and "2 of 2 rows rejected" in message
    assert "line 1: timestamp is not a time: '09 13 2020'" in message


# --- damaged or unusual tables ------------------------------------------------------------


@pytest.mark.parametrize("name", ["reviews.jsonl.gz", "reviews.csv.gz"])
def test_truncated_gzip_is_named_with_its_file(tmp_path, name):
    rows = [{"user_id": f"u{k}", "item_id": "i", "rating": 5} for k in range(3000)]
    if name.endswith(".jsonl.gz"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = "user_id,item_id,rating\n" + "".join(f"u{k},i,5\n" for k in range(3000))
    data = gzip.compress(text.encode(), mtime=0)
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SchemaError) as info:
        read_table(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the gzip data ends early or is damaged") and "copy it again" in message
    if name.endswith(".jsonl.gz"):
        assert re.search(r"after line \d+", message)


def test_plain_csv_named_gz_is_read_by_content(tmp_path):
    path = tmp_path / "reviews.csv.gz"
    path.write_text("user_id,item_id,rating\n007,x,5\n")
    assert read_table(path)["user_id"].tolist() == ["007"]


@pytest.mark.parametrize("form", ["csv", "jsonl"])
def test_categories_written_as_a_number_are_one_category(tmp_path, form):
    (tmp_path / "reviews.csv").write_text("user_id,item_id,rating\nu,a,5\nu,b,5\n")
    items = tmp_path / f"items.{form}"
    if form == "csv":
        items.write_text("item_id,title,categories\na,1984,5\nb,x,\n")
    else:
        items.write_text('{"item_id": "a", "title": 1984, "categories": 5}\n{"item_id": "b", "categories": null}\n')
    import_local(tmp_path / "reviews.csv", items, tmp_path / "interim")
    meta = pd.read_parquet(tmp_path / "interim" / "items.parquet")
    assert [list(c) for c in meta["categories"]] == [["5"], []]
    assert meta["title"].tolist()[0] == "1984"


def test_categories_of_another_kind_set_the_item_row_aside(tmp_path):
    (tmp_path / "reviews.csv").write_text("user_id,item_id,rating\nu,a,5\n")
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "a", "categories": ["x"]}\n{"item_id": "b", "categories": {"x": 1}}\n')
    report = import_local(tmp_path / "reviews.csv", items, tmp_path / "interim")
    assert report["meta"]["rejected"] == 1
    (reject,) = [json.loads(x) for x in (tmp_path / "interim" / "rejects.jsonl").read_text().splitlines()]
    assert (reject["file"], reject["line"]) == ("meta", 2) and reject["reason"].startswith("categories is a dict")


def test_a_table_with_its_own_line_column_is_imported(tmp_path):
    (tmp_path / "reviews.csv").write_text("line,user_id,item_id,rating\n10,u,a,5\n20,,a,5\n")
    (tmp_path / "items.csv").write_text("item_id,line\na,7\n")
    report = import_local(tmp_path / "reviews.csv", tmp_path / "items.csv", tmp_path / "interim", max_reject_frac=0.5)
    assert report["reviews"]["rejected"] == 1
    got, meta = _interim(tmp_path / "interim")
    assert got["line"].tolist() == [1] and meta["line"].tolist() == [1]
    (reject,) = [json.loads(x) for x in (tmp_path / "interim" / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 2 and json.loads(reject["text"])["line_in_table"] == "20"
