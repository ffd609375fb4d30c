"""Convert stage: real outputs from hostile and real inputs."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llm4rec.data.convert import ConvertError, convert_dataset
from llm4rec.data.records import ITEMS_SCHEMA, REVIEWS_SCHEMA, parse_review_time

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon2018"
REAL_REVIEWS = REAL / "Magazine_Subscriptions_5.json.gz"
REAL_META = REAL / "meta_Magazine_Subscriptions.json.gz"

PAYLOAD = "__import__('os').system('touch pwned')"


def _review(user: str, item: str, rating, **extra) -> str:
    record = {"reviewerID": user, "asin": item, "overall": rating}
    record.update(extra)
    return json.dumps(record)


def _write_gz(path: Path, lines: list[str | bytes]) -> Path:
    with gzip.open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def _meta_2018(tmp_path: Path) -> Path:
    lines = [
        json.dumps(
            {"asin": "I1", "title": "One", "brand": "B", "category": ["A", "B"], "description": ["first", "second"]}
        ),
        json.dumps({"asin": "I2", "title": "Two", "category": "['X', 'Y']"}),
    ]
    return _write_gz(tmp_path / "meta.json.gz", lines)


def _hostile_reviews(tmp_path: Path) -> Path:
    lines: list[str | bytes] = [
        _review("U1", "I1", 5.0, unixReviewTime=1393372800, reviewText="good", summary="s"),
        _review("U2", "I1", "4.0", unixReviewTime="1393372800", verified="True", vote="3"),
        '{"reviewerID": "U3", "asin": "I2", "overall": 3.0, "reviewTime": "09 13, 2009"',
        _review("U4", "I2", 2.0, reviewTime="09 13, 2009"),
        json.dumps({"asin": "I2", "overall": 5.0}),
        json.dumps({"reviewerID": "U5", "overall": 5.0}),
        json.dumps({"reviewerID": "U5", "asin": "I3"}),
        _review("U5", "I3", "five"),
        PAYLOAD,
        '["a", "list", "not", "an", "object"]',
        "",
        _review("U6", "I3", "NaN"),
        b'{"reviewerID": "U7", "asin": "I\xff", "overall": 5.0}',
        "{'reviewerID': 'U8', 'asin': 'I4', 'overall': '1.0', 'unixReviewTime': 1078531200}",
        "[" * 5000 + "]" * 5000,
        _review("U9", "I4", 4, reviewText=None, summary=12),
    ]
    return _write_gz(tmp_path / "reviews.json.gz", lines)


def test_hostile_reviews_convert_good_lines_and_reject_bad_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "interim"
    summary = convert_dataset(
        _hostile_reviews(tmp_path),
        _meta_2018(tmp_path),
        out,
        max_reject_frac=0.9,
        progress=False,
    )
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()

    reviews = pq.read_table(out / "reviews.parquet")
    assert reviews.schema.equals(REVIEWS_SCHEMA)
    rows = reviews.to_pylist()
    assert [r["line"] for r in rows] == [1, 2, 4, 14, 16]
    assert [r["user_id"] for r in rows] == ["U1", "U2", "U4", "U8", "U9"]
    assert [r["rating"] for r in rows] == [5.0, 4.0, 2.0, 1.0, 4.0]
    assert all(isinstance(r["rating"], float) for r in rows)
    assert rows[1]["timestamp"] == 1393372800
    assert rows[2]["timestamp"] == 1252800000  # 2009-09-13 00:00 UTC from reviewTime
    assert rows[4]["timestamp"] is None
    assert rows[0]["review_text"] == "good" and rows[4]["review_text"] is None
    assert rows[4]["summary"] == "12"

    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r["reason"] for r in rejects}
    assert set(by_line) == {3, 5, 6, 7, 8, 9, 10, 12, 13, 15}
    assert all(r["file"] == "reviews" for r in rejects)
    assert by_line[3].startswith("unparseable")
    assert by_line[5] == "missing reviewerID"
    assert by_line[6] == "missing asin"
    assert by_line[7] == "missing overall"
    assert by_line[8].startswith("overall not a number")
    assert by_line[9].startswith("unparseable")
    assert by_line[10] == "not an object: list"
    assert by_line[12].startswith("overall not finite")
    assert by_line[13].startswith("not UTF-8")
    assert by_line[15].startswith("unparseable")
    payload_entry = next(r for r in rejects if r["line"] == 9)
    assert payload_entry["text"] == PAYLOAD
    assert all(len(r["text"]) <= 200 for r in rejects)

    stats = json.loads((out / "convert.json").read_text())
    assert stats == summary
    assert stats["reviews"]["lines"] == 16
    assert stats["reviews"]["blank"] == 1
    assert stats["reviews"]["rows"] == 5
    assert stats["reviews"]["rejected"] == 10
    assert stats["reviews"]["coerced"]["overall_from_str"] >= 2
    assert stats["reviews"]["coerced"]["unixReviewTime_from_str"] == 1
    assert stats["reviews"]["coerced"]["timestamp_from_reviewTime"] == 1
    assert stats["reviews"]["formats"] == {"json": 9, "python_literal": 1}
    assert stats["max_reject_frac"] == 0.9

    items = pq.read_table(out / "items.parquet")
    assert items.schema.equals(ITEMS_SCHEMA)
    assert items.to_pylist() == [
        {
            "line": 1,
            "item_id": "I1",
            "title": "One",
            "brand": "B",
            "categories": ["A", "B"],
            "description": "first second",
        },
        {"line": 2, "item_id": "I2", "title": "Two", "brand": None, "categories": ["X", "Y"], "description": None},
    ]
    assert stats["meta"]["coerced"] == {"category_from_str": 1}
    assert not list(out.glob("*.tmp"))


def test_too_many_rejects_fail_clearly_after_writing_everything(tmp_path):
    out = tmp_path / "interim"
    with pytest.raises(ConvertError) as info:
        convert_dataset(_hostile_reviews(tmp_path), _meta_2018(tmp_path), out, progress=False)
    message = str(info.value)
    assert "reviews file" in message and "reviews.json.gz" in message
    assert "10 of 15 lines rejected (66.67%)" in message
    assert "max_reject_frac 1.00%" in message
    assert str((out / "rejects.jsonl").resolve()) in message
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 10
    assert json.loads((out / "convert.json").read_text())["reviews"]["rejected"] == 10
    assert pq.read_table(out / "reviews.parquet").num_rows == 5


def test_too_many_rejects_are_copied_where_the_message_says(tmp_path):
    """The interim folder is a failed job's output (Snakemake deletes it); the copy is not."""
    out = tmp_path / "interim"
    copy = tmp_path / "logs" / "convert.rejects.jsonl"
    with pytest.raises(ConvertError) as info:
        convert_dataset(_hostile_reviews(tmp_path), _meta_2018(tmp_path), out, progress=False, rejects_copy=copy)
    message = str(info.value)
    assert str(copy.resolve()) in message and str(out) not in message
    assert copy.read_text() == (out / "rejects.jsonl").read_text()
    assert len(copy.read_text().splitlines()) == 10
    convert_dataset(
        _hostile_reviews(tmp_path), _meta_2018(tmp_path), out, progress=False, max_reject_frac=0.9, rejects_copy=copy
    )
    assert not copy.exists()  # a later success leaves no stale evidence behind


def test_2014_meta_python_literals_convert(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = tmp_path / "meta_Beauty.json.gz"
    _write_gz(
        meta,
        [
            "{'asin': '0205616461', 'description': 'As we age, our once youthful skin...', "
            "'title': 'Bio-Active Anti-Aging Serum', 'imUrl': 'http://x/y.jpg', "
            "'salesRank': {'Beauty': 461764}, 'categories': [['Beauty', 'Skin Care', 'Face'], "
            "['Other']], 'related': {'also_bought': ['B00A', 'B00B']}}",
            "{'asin': '0558925278', 'brand': u'Eco Friendly', 'categories': [['Beauty', 'Makeup']], 'price': 10.5}",
            "{'asin': '0733001998', 'title': 'Nail polish', 'categories': \"[['Beauty']]\"}",
            "{'title': 'no asin here', 'categories': [['Beauty']]}",
            "{'asin': 'B000X', 'title': \"It's fine\", 'categories': 'Beauty', "
            "'description': ['one', 'two'], 'brand': {'weird': 1}}",
            "{'asin': 'B000Y', 'title': " + PAYLOAD + "}",
        ],
    )
    reviews = _write_gz(
        tmp_path / "reviews.json.gz",
        [
            "{'reviewerID': 'A1', 'asin': '0205616461', 'overall': 5.0, 'reviewTime': '01 2, 2014',"
            " 'reviewText': 'x', 'summary': 'y', 'unixReviewTime': 1388620800}",
        ],
    )
    out = tmp_path / "interim"
    summary = convert_dataset(reviews, meta, out, max_reject_frac=0.5, progress=False)
    assert not (tmp_path / "pwned").exists()
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert [i["item_id"] for i in items] == ["0205616461", "0558925278", "0733001998", "B000X"]
    assert items[0]["categories"] == ["Beauty", "Skin Care", "Face"]
    assert items[0]["description"] == "As we age, our once youthful skin..."
    assert items[0]["brand"] is None
    assert items[1]["brand"] == "Eco Friendly"
    assert items[2]["categories"] == ["Beauty"]
    assert items[3]["categories"] == ["Beauty"] and items[3]["brand"] is None
    assert items[3]["description"] == "one two"
    assert summary["meta"]["formats"] == {"python_literal": 5}
    assert summary["meta"]["coerced"]["brand_invalid"] == 1
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [("meta", 4), ("meta", 6)]
    assert rejects[0]["reason"] == "missing asin"
    assert rejects[1]["reason"].startswith("unparseable")
    assert pq.read_table(out / "reviews.parquet").to_pylist()[0]["timestamp"] == 1388620800


def test_overlong_line_is_rejected_without_reading_it_whole(tmp_path):
    huge = json.dumps({"reviewerID": "U", "asin": "I", "overall": 1.0, "reviewText": "x" * 50_000})
    reviews = tmp_path / "reviews.json"
    reviews.write_text("\n".join([_review("A", "B", 5.0), huge, _review("C", "D", 4.0)]) + "\n")
    out = tmp_path / "interim"
    summary = convert_dataset(reviews, None, out, max_line_bytes=1000, max_reject_frac=0.5, progress=False)
    assert summary["reviews"]["rows"] == 2
    assert pq.read_table(out / "reviews.parquet").column("line").to_pylist() == [1, 3]
    (reject,) = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 2 and reject["reason"].startswith("line too long")
    assert f"{len(huge) + 1} bytes" in reject["reason"]
    assert pq.read_table(out / "items.parquet").num_rows == 0


def test_line_exactly_at_the_cap_is_kept(tmp_path):
    line = _review("A", "B", 5.0, reviewText="")
    line = line[:-2] + "x" * (300 - len(line)) + line[-2:]
    assert len(line) == 300
    reviews = tmp_path / "reviews.json"
    reviews.write_text(line + "\n" + line + "y\n")
    out = tmp_path / "interim"
    summary = convert_dataset(reviews, None, out, max_line_bytes=300, max_reject_frac=0.5, progress=False)
    assert summary["reviews"]["rows"] == 1 and summary["reviews"]["reasons"] == {"line too long": 1}


def test_plain_file_without_final_newline_and_chunked_writes(tmp_path):
    reviews = tmp_path / "reviews.json.gz"
    reviews.write_text("\n".join(_review(f"U{i}", f"I{i % 7}", 1 + i % 5) for i in range(25)))
    out = tmp_path / "interim"
    convert_dataset(reviews, None, out, chunk_rows=4, progress=False)
    table = pq.read_table(out / "reviews.parquet")
    assert table.column("line").to_pylist() == list(range(1, 26))
    assert pq.ParquetFile(out / "reviews.parquet").metadata.num_row_groups == 7


def test_truncated_gzip_fails_clearly_and_leaves_no_parquet(tmp_path):
    full = _write_gz(tmp_path / "full.json.gz", [_review(f"U{i}", "I", 5.0) for i in range(5000)])
    cut = tmp_path / "reviews.json.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "interim"
    with pytest.raises(ConvertError, match="corrupt or truncated after line"):
        convert_dataset(cut, None, out, progress=False)
    assert not (out / "reviews.parquet").exists()
    assert list(out.iterdir()) == []


def test_empty_review_file_fails(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text("\n\n")
    with pytest.raises(ConvertError, match="no usable review"):
        convert_dataset(reviews, None, tmp_path / "interim", progress=False)


def test_parse_review_time():
    assert parse_review_time("03 6, 2004") == 1078531200
    assert parse_review_time("not a date") is None


@pytest.mark.skipif(
    not REAL_REVIEWS.exists() or not REAL_META.exists(), reason=f"real Amazon 2018 files not found under {REAL}"
)
def test_real_magazine_files(tmp_path):
    out = tmp_path / "interim"
    summary = convert_dataset(REAL_REVIEWS, REAL_META, out, max_reject_frac=0.0, progress=False)
    assert summary["reviews"]["rejected"] == 0 and summary["meta"]["rejected"] == 0
    assert (out / "rejects.jsonl").read_text() == ""
    reviews = pq.read_table(out / "reviews.parquet")
    assert reviews.num_rows == 2375
    assert reviews.schema.field("rating").type == "double"
    ratings = reviews.column("rating").to_pylist()
    assert all(isinstance(r, float) and math.isfinite(r) and 1 <= r <= 5 for r in ratings)
    assert reviews.column("line").to_pylist() == list(range(1, 2376))
    assert reviews.column("timestamp").null_count == 0
    assert len(set(reviews.column("user_id").to_pylist())) == 348
    assert len(set(reviews.column("item_id").to_pylist())) == 157
    items = pq.read_table(out / "items.parquet")
    assert items.num_rows == 3385
    assert len(set(items.column("item_id").to_pylist())) == 2320
    categories = items.column("categories").to_pylist()
    assert all(isinstance(c, list) and all(isinstance(x, str) for x in c) for c in categories)
    assert sum(1 for c in categories if c) == 2883  # 502 real records have an empty list
