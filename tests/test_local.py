"""Local tables: ids stay exact in every format, bad rows and bad bytes are named."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm4rec.convert import ConvertError
from llm4rec.local import SchemaError, import_local, read_table
from llm4rec.preprocess import PreprocessSettings, preprocess

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
