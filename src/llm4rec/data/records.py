"""Parsing one raw Amazon record (a JSON or Python-literal line) into a review or item row:
what is coerced, what is rejected and why (docs/method.md 2.2)."""

from __future__ import annotations

import ast
import calendar
import json
import math
import time
from collections import Counter
from typing import Any

import pyarrow as pa

_INT64_MAX = 2**63 - 1


REJECT_TEXT_CHARS = 200
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, OverflowError)
REVIEWS_SCHEMA = pa.schema(
    [
        pa.field("line", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("rating", pa.float64(), nullable=False),
        pa.field("timestamp", pa.int64()),
        pa.field("review_text", pa.string()),
        pa.field("summary", pa.string()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("line", pa.int64(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string()), nullable=False),
        pa.field("description", pa.string()),
    ]
)


class RejectedRecord(Exception):
    """A line that cannot become a row; ``code`` is counted, ``detail`` goes to rejects.jsonl."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


def safe_literal(text: str) -> Any:
    """``ast.literal_eval`` that turns every failure (syntax, depth, memory) into ValueError."""
    try:
        return ast.literal_eval(text)
    except _LITERAL_ERRORS as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def parse_record(text: str, formats: Counter | None = None) -> dict:
    """Parse one line as a JSON object, else as a Python-literal dict (2014 meta); `formats`
    counts which of the two it was."""
    try:
        value = json.loads(text)
        kind = "json"
    except (ValueError, RecursionError) as json_exc:
        try:
            value = safe_literal(text)
        except ValueError:
            raise RejectedRecord("unparseable", f"not JSON ({json_exc}) nor a Python literal") from None
        kind = "python_literal"
    if not isinstance(value, dict):
        raise RejectedRecord("not an object", type(value).__name__)
    if formats is not None:
        formats[kind] += 1
    return value


def _id(record: dict, key: str, coerced: Counter) -> str:
    value = record.get(key)
    if isinstance(value, str):
        value = value.strip()
        if value:
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        coerced[f"{key}_from_int"] += 1
        return str(value)
    raise RejectedRecord(f"missing {key}", "" if value is None else f"{value!r:.60}")


def _rating(record: dict, coerced: Counter) -> float:
    value = record.get("overall")
    if value is None:
        raise RejectedRecord("missing overall")
    if isinstance(value, bool):
        raise RejectedRecord("overall not a number", repr(value))
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise RejectedRecord("overall not a number", f"{value!r:.60}") from None
        coerced["overall_from_str"] += 1
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise RejectedRecord("overall not a number", f"{type(value).__name__}")
    if not math.isfinite(number):
        raise RejectedRecord("overall not finite", repr(value))
    return number


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                return None
            if not (math.isfinite(as_float) and as_float.is_integer()):
                return None
            number = int(as_float)
    else:
        return None
    return number if -_INT64_MAX <= number <= _INT64_MAX else None


def parse_review_time(text: str) -> int | None:
    """Unix seconds (UTC midnight) of an Amazon ``reviewTime`` like ``"09 13, 2009"``."""
    try:
        parsed = time.strptime(text.strip(), "%m %d, %Y")
    except ValueError:
        return None
    return calendar.timegm(parsed)


def _timestamp(record: dict, coerced: Counter) -> int | None:
    raw = record.get("unixReviewTime")
    if raw is not None:
        number = _int_or_none(raw)
        if number is not None:
            if isinstance(raw, str):
                coerced["unixReviewTime_from_str"] += 1
            return number
        coerced["unixReviewTime_invalid"] += 1
    text = record.get("reviewTime")
    if isinstance(text, str):
        number = parse_review_time(text)
        if number is not None:
            coerced["timestamp_from_reviewTime"] += 1
            return number
    coerced["timestamp_missing"] += 1
    return None


def _text(record: dict, key: str, coerced: Counter) -> str | None:
    """An optional text field: strings as is, numbers as their text, lists of strings joined."""
    value = record.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        coerced[f"{key}_from_number"] += 1
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        coerced[f"{key}_from_list"] += 1
        return " ".join(value)
    coerced[f"{key}_invalid"] += 1
    return None


def _string_list(value: Any) -> list[str] | None:
    if isinstance(value, (list, tuple)):
        kept = (v for v in value if isinstance(v, (str, int, float)))
        return [v if isinstance(v, str) else str(v) for v in kept]
    return None


def _maybe_list_literal(value: Any, key: str, coerced: Counter) -> Any:
    """Turn a string that holds a list literal (``"['a', 'b']"``) into the list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = safe_literal(text)
            except ValueError:
                return value
            if isinstance(parsed, (list, tuple)):
                coerced[f"{key}_from_str"] += 1
                return parsed
    return value


def _categories(record: dict, coerced: Counter) -> list[str]:
    key = "category" if "category" in record else "categories"
    value = record.get(key)
    if value is None:
        return []
    value = _maybe_list_literal(value, key, coerced)
    if isinstance(value, str):
        if value.strip():
            coerced[f"{key}_from_plain_str"] += 1
            return [value]
        return []
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):
            value = value[0]
        result = _string_list(value)
        if result is not None:
            return result
    coerced[f"{key}_invalid"] += 1
    return []


def _description(record: dict, coerced: Counter) -> str | None:
    value = _maybe_list_literal(record.get("description"), "description", coerced)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return " ".join(v for v in value if isinstance(v, str))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        coerced["description_from_number"] += 1
        return str(value)
    coerced["description_invalid"] += 1
    return None


def review_row(number: int, record: dict, coerced: Counter) -> tuple:
    """A reviews.parquet row from a parsed record; raises ``RejectedRecord`` without user/item/rating."""
    return (
        number,
        _id(record, "reviewerID", coerced),
        _id(record, "asin", coerced),
        _rating(record, coerced),
        _timestamp(record, coerced),
        _text(record, "reviewText", coerced),
        _text(record, "summary", coerced),
    )


def item_row(number: int, record: dict, coerced: Counter) -> tuple:
    """An items.parquet row; only a missing asin rejects, bad optional fields become nulls."""
    return (
        number,
        _id(record, "asin", coerced),
        _text(record, "title", coerced),
        _text(record, "brand", coerced),
        _categories(record, coerced),
        _description(record, coerced),
    )
