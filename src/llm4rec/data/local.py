"""Bring-your-own data: tables already in the canonical schema (README, "Bring your own data").

A `local` dataset skips download and convert; this module reads its tables (parquet, CSV or
JSON lines), checks the columns, and writes the same interim files convert writes. Rows
without a user, item or finite rating are set aside in ``rejects.jsonl``, as convert does.

Ids are text from the first read, whatever the format: a number type would turn ``007`` into
``7``, ``1000`` into ``"1000.0"`` once a null makes the column float, and merge distinct ids
above 2**53. CSV/TSV id columns are read as strings, JSON lines are parsed with exact integers
(and exact decimals), parquet integers become their decimal text and parquet floats are taken
only when every value is an integer the float holds exactly. Anything else is an error that
names the file and the column, never a silently changed id.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from decimal import Decimal
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from llm4rec.data.convert import ConvertError, keep_rejects
from llm4rec.data.records import REJECT_TEXT_CHARS
from llm4rec.data.tables import SchemaError, read_table

log = logging.getLogger(__name__)

REVIEW_COLUMNS = {
    "user_id": "required",
    "item_id": "required",
    "rating": "required",
    "timestamp": "optional",
    "review_text": "optional",
    "summary": "optional",
}
ITEM_COLUMNS = {
    "item_id": "required",
    "title": "optional",
    "brand": "optional",
    "categories": "optional",
    "description": "optional",
}


def _check_columns(df: pd.DataFrame, spec: dict, path: Path) -> pd.DataFrame:
    """The table with its required columns; an empty file (no header at all) is an empty table."""
    if len(df) == 0 and len(df.columns) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in spec})
    missing = [c for c, kind in spec.items() if kind == "required" and c not in df.columns]
    if missing:
        raise SchemaError(
            f"{path}: missing required column(s) {missing}; found {list(df.columns)}. "
            "See the README section 'Bring your own data'."
        )
    return df


# Unix seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the times a datetime holds.
MIN_TIME, MAX_TIME = -62_135_596_800, 253_402_300_799
TIME_HINT = "unix seconds or ISO-8601 text such as 2020-09-13T12:26:41Z"
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _shown(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seconds(value: int | float | Decimal, shown: object) -> tuple[int | None, str]:
    """Whole unix seconds in years 1-9999, or the reason this number is not one."""
    if isinstance(value, (float, Decimal)):
        if not (value.is_finite() if isinstance(value, Decimal) else np.isfinite(value)):
            return None, f"timestamp is not a time: {_shown(shown)} (expected {TIME_HINT})"
        if value != int(value):
            return None, (
                f"timestamp is not a time: {_shown(shown)} is not a whole number of seconds "
                "(the unit is whole unix seconds: round the column as suits your data)"
            )
        value = int(value)
    if not MIN_TIME <= value <= MAX_TIME:
        return None, (
            f"timestamp is not a time: {_shown(shown)} is not unix seconds of a year 1-9999 "
            "(milliseconds? divide by 1000)"
        )
    return int(value), ""


def _text_time(text: str) -> tuple[int | float | Decimal | None, bool]:
    """A number written as text, else (None, whether the text is to be read as ISO-8601)."""
    if _INTEGER.fullmatch(text):
        return int(text), False
    if _NUMBER.fullmatch(text) or text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
        return Decimal(text), False
    return None, True


def parse_timestamps(values: pd.Series) -> tuple[pd.api.extensions.ExtensionArray, np.ndarray]:
    """Whole unix seconds (Int64, null where missing) and a reject reason per value ('' if fine).

    Numbers are unix seconds; text is a number or an ISO-8601 time (a time without an offset
    is UTC); parquet timestamps and dates are taken as they are. A fraction of a second, a
    time outside years 1-9999 (as milliseconds would be), a boolean or other text is refused
    rather than rounded or dropped: the order of a user's history, hence the split, hangs on it.
    """
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _datetimes(pd.Series(values).reset_index(drop=True), reasons)
    if pd.api.types.is_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype):
        # Every valid time is below 2**53, so float64 holds it (and tells it from a bad one) exactly.
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(numbers)
        ok = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (numbers >= MIN_TIME) & (numbers <= MAX_TIME)
        for k in np.flatnonzero(~ok & ~missing):
            value = values.iloc[k]
            reasons[k] = _seconds(value.item() if isinstance(value, np.generic) else value, value)[1]
        return pd.arrays.IntegerArray(np.where(ok, numbers, 0).astype(np.int64), ~ok), reasons
    iso: dict[int, str] = {}
    for k, value in enumerate(values.tolist() if hasattr(values, "tolist") else list(values)):
        if isinstance(value, str):
            text = value.strip()
            if not text:
                missing[k] = True
                continue
            number, is_iso = _text_time(text)
            if is_iso:
                iso[k] = text
                continue
            seconds, reasons[k] = _seconds(number, value)
        elif value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
            missing[k] = True
            continue
        elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, Decimal, np.number)):
            if isinstance(value, (pd.Timestamp, np.datetime64)) or type(value).__name__ in ("datetime", "date"):
                iso[k] = str(pd.Timestamp(value).isoformat())
                continue
            seconds, reasons[k] = None, f"timestamp is not a time: {_shown(value)} (expected {TIME_HINT})"
        else:
            number = value.item() if isinstance(value, np.generic) else value
            seconds, reasons[k] = _seconds(number, value)
        if seconds is None:
            missing[k] = True
        else:
            out[k] = seconds
    if iso:
        keys = np.fromiter(iso, dtype=np.int64, count=len(iso))
        texts = pd.Series(list(iso.values()), dtype=object)
        parsed = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
        sub_reasons = np.full(len(keys), "", dtype=object)
        seconds, sub_reasons = _datetimes(parsed, sub_reasons, texts)
        out[keys] = seconds.to_numpy(dtype=np.int64, na_value=0)
        missing[keys] = seconds.isna()
        reasons[keys] = sub_reasons
    return pd.arrays.IntegerArray(out, missing), reasons


def _datetimes(
    times: pd.Series, reasons: np.ndarray, texts: pd.Series | None = None
) -> tuple[pd.api.extensions.ExtensionArray, np.ndarray]:
    """Unix seconds of datetimes (naive ones are UTC); with ``texts``, NaT is text that is no time."""
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    nat = times.isna().to_numpy()
    whole = times.dt.floor("s")
    fraction = (times != whole).to_numpy() & ~nat
    seconds = whole.to_numpy(dtype="datetime64[s]").astype(np.int64)
    shown = texts if texts is not None else times.astype(str)
    for k in np.flatnonzero(nat if texts is not None else np.zeros_like(nat)):
        reasons[k] = f"timestamp is not a time: {_shown(shown.iloc[k])} (expected {TIME_HINT})"
    for k in np.flatnonzero(fraction):
        reasons[k] = (
            f"timestamp is not a time: {_shown(shown.iloc[k])} is not a whole number of seconds "
            "(the unit is whole unix seconds: round the column as suits your data)"
        )
    return pd.arrays.IntegerArray(np.where(nat | fraction, 0, seconds), nat | fraction), reasons


def _categories(value: object) -> tuple[list[str], str]:
    """The categories of one item row and '' , or [] and why the value is not categories."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return [], ""
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                parsed = ast.literal_eval(s)
                return ([str(v) for v in parsed] if isinstance(parsed, (list, tuple)) else [s]), ""
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                return [s], ""
        return [p for p in s.split("|") if p], ""
    if isinstance(value, (int, float, Decimal, np.number)):
        return [str(value)], ""  # one category written as a number (a category code)
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value], ""
    return [], f"categories is a {type(value).__name__}: a list of strings or an 'a|b' string is expected"


def _set_line_aside(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A table's own `line` column is kept under another name: `line` is the row number here."""
    if "line" not in df.columns:
        return df
    name = "line_in_table"
    while name in df.columns:
        name += "_"
    log.warning("%s: its column 'line' is kept as %r: 'line' is the row number in the interim tables", path, name)
    return df.rename(columns={"line": name})


def _write_rejects(fh: IO[str], label: str, frame: pd.DataFrame, reasons: np.ndarray) -> None:
    bad = reasons != ""
    rows = frame[bad].astype(str).to_dict("records")
    for line, reason, row in zip(frame["line"][bad], reasons[bad], rows):
        text = json.dumps(row, ensure_ascii=False)[:REJECT_TEXT_CHARS]
        entry = {"file": label, "line": int(line), "reason": reason, "text": text}
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _reason_counts(*reasons: np.ndarray) -> dict[str, int]:
    """Rejected rows per kind of reason (the text before the value): what convert.json shows."""
    kinds = pd.Series(np.concatenate([r[r != ""] for r in reasons]), dtype=object).str.split(":").str[0]
    return {str(k): int(v) for k, v in kinds.value_counts().items()}


def import_local(
    reviews_path: Path, items_path: Path, out_dir: Path, max_reject_frac: float = 0.01, rejects_copy: Path | None = None
) -> dict:
    """Validate and copy local tables to ``out_dir``'s interim files; returns the counts.

    Raises :class:`ConvertError` after writing every output when too many review rows are
    rejected or none is usable; with ``rejects_copy`` (a path beside the log, which outlives a
    failed job's outputs) the rejects are copied there and the message names that copy.
    """
    reviews_path, items_path, out_dir = Path(reviews_path), Path(items_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rejects_copy is not None:
        Path(rejects_copy).unlink(missing_ok=True)
    reviews = _set_line_aside(_check_columns(read_table(reviews_path), REVIEW_COLUMNS, reviews_path), reviews_path)
    items = _set_line_aside(_check_columns(read_table(items_path), ITEM_COLUMNS, items_path), items_path)
    reviews.insert(0, "line", np.arange(1, len(reviews) + 1, dtype=np.int64))
    items.insert(0, "line", np.arange(1, len(items) + 1, dtype=np.int64))
    rating = pd.to_numeric(reviews["rating"], errors="coerce")
    if "timestamp" in reviews:
        timestamp, time_reasons = parse_timestamps(reviews["timestamp"])
    else:
        timestamp, time_reasons = pd.array([pd.NA] * len(reviews), dtype="Int64"), np.full(len(reviews), "")
    reasons = np.select(
        [
            reviews["user_id"].isna().to_numpy(),
            reviews["item_id"].isna().to_numpy(),
            ~np.isfinite(rating.to_numpy(float)),
            time_reasons != "",
        ],
        ["missing user_id", "missing item_id", "rating is not a finite number", time_reasons],
        default="",
    ).astype(object)
    categories = [_categories(v) for v in items["categories"]] if "categories" in items else [([], "")] * len(items)
    category_reasons = np.array([r for _, r in categories], dtype=object)
    item_reasons = np.where(items["item_id"].isna().to_numpy(), "missing item_id", category_reasons).astype(object)
    bad = reasons != ""
    rejects_path = out_dir / "rejects.jsonl"
    with open(rejects_path, "w", encoding="utf-8") as fh:
        _write_rejects(fh, "reviews", reviews, reasons)
        _write_rejects(fh, "meta", items, item_reasons)

    good = reviews[~bad].copy()
    good["rating"] = rating[~bad].astype(np.float64)
    good["user_id"] = good["user_id"].astype(str)
    good["item_id"] = good["item_id"].astype(str)
    good["timestamp"] = timestamp[~bad]
    for col in ("review_text", "summary"):
        good[col] = good[col].astype("string") if col in good else pd.array([None] * len(good), dtype="string")
    good[["line", *REVIEW_COLUMNS]].to_parquet(out_dir / "reviews.parquet", index=False)

    item_ok = item_reasons == ""
    kept = items[item_ok].copy()
    kept["item_id"] = kept["item_id"].astype(str)
    for col in ("title", "brand", "description"):
        kept[col] = kept[col].astype("string") if col in kept else pd.array([None] * len(kept), dtype="string")
    kept["categories"] = [c for (c, _), ok in zip(categories, item_ok) if ok]
    kept[["line", *ITEM_COLUMNS]].to_parquet(out_dir / "items.parquet", index=False)

    n_bad = int(bad.sum())
    report = {
        "reviews": {"path": str(reviews_path), "lines": int(len(reviews)), "rows": int(len(good)), "rejected": n_bad},
        "meta": {
            "path": str(items_path),
            "lines": int(len(items)),
            "rows": int(len(kept)),
            "rejected": int(len(items) - len(kept)),
        },
        "reasons": _reason_counts(reasons, item_reasons),
        "max_reject_frac": max_reject_frac,
        "source": "local",
    }
    if n_bad or len(items) - len(kept):
        log.warning(
            "%d review and %d item rows set aside (%s): %s lists each with its line",
            n_bad,
            len(items) - len(kept),
            ", ".join(f"{k}: {v}" for k, v in report["reasons"].items()),
            rejects_path,
        )
    (out_dir / "convert.json").write_text(json.dumps(report, indent=2) + "\n")
    problem = None
    if len(reviews) and n_bad / len(reviews) > max_reject_frac:
        first = int(np.flatnonzero(bad)[0])
        problem = (
            f"{reviews_path}: {n_bad} of {len(reviews)} rows rejected ({n_bad / len(reviews):.2%}), "
            f"more than convert.max_reject_frac {max_reject_frac:.2%}; the first, line "
            f"{int(reviews['line'].iloc[first])}: {reasons[first]}"
        )
    elif len(good) == 0:
        problem = f"{reviews_path}: no usable review row"
    if problem:
        where = keep_rejects(rejects_path, rejects_copy)
        raise ConvertError(
            f"{problem}. Row numbers and reasons are in {where}; if the table is right,"
            " raise convert.max_reject_frac in the config."
        )
    return report
