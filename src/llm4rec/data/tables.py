"""Reading a user's own table (CSV, TSV, Parquet, JSON lines; gzip or not) with exact string
ids and errors that name the file and line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm4rec.data.convert import open_raw

ID_COLUMNS = ("user_id", "item_id")

# Read as text from CSV/TSV, so that a title "1984" or a category "5" stays what was written.
TEXT_COLUMNS = ("review_text", "summary", "title", "brand", "categories", "description")


class SchemaError(ValueError):
    """A local table lacks a required column, has an unreadable format or an inexact id."""


def read_table(path: Path) -> pd.DataFrame:
    """Read parquet, CSV/TSV or JSON lines by file name; id columns hold ``str`` or ``None``."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return _read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return _read_csv(path, ",")
        if name.endswith((".tsv", ".tsv.gz")):
            return _read_csv(path, "\t")
        if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
            return _read_json_lines(path)
    except UnicodeDecodeError as exc:
        raise SchemaError(_not_utf8(path, exc)) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SchemaError(_damaged_gzip(path, exc)) from None
    raise SchemaError(f"{path}: unknown table format (use .parquet, .csv, .tsv or .jsonl)")


def _damaged_gzip(path: Path, exc: BaseException, after_line: int | None = None) -> str:
    where = f" after line {after_line}" if after_line is not None else ""
    return (
        f"{path}: the gzip data ends early or is damaged{where} ({exc}); the file was cut short while "
        "written or copied: write or copy it again (gzip -t checks a file)."
    )


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    """Read by content like convert (a plain table named ``.csv.gz`` is read as it is)."""
    try:
        with open_raw(path) as fh:
            df = pd.read_csv(
                fh,
                sep=sep,
                dtype={c: str for c in (*ID_COLUMNS, *TEXT_COLUMNS)},
                encoding="utf-8",
                keep_default_na=False,
                na_values=[""],
            )
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as exc:
        kind = "TSV" if sep == "\t" else "CSV"
        raise SchemaError(f"{path}: not a well-formed {kind} table: {exc}") from None
    for col in ID_COLUMNS:
        if col in df:
            df[col] = pd.Series([None if pd.isna(v) else v for v in df[col]], index=df.index, dtype=object)
    return df


def _read_parquet(path: Path) -> pd.DataFrame:
    table = pq.read_table(path)
    df = table.to_pandas()
    for col in ID_COLUMNS:
        if col in table.column_names:
            df[col] = pd.Series(_exact_ids(table.column(col), path, col), index=df.index, dtype=object)
    return df


def _exact_ids(column: pa.ChunkedArray, path: Path, name: str) -> list[str | None]:
    """A parquet id column as decimal text, or SchemaError when that text would not be exact."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _exact_ids(column.cast(kind.value_type), path, name)
    if pa.types.is_null(kind):
        return [None] * len(column)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.to_pylist()
    if pa.types.is_integer(kind):
        return column.cast(pa.string()).to_pylist()
    if pa.types.is_floating(kind):
        values = column.to_numpy().astype(np.float64)
        missing = column.is_null().to_numpy(zero_copy_only=False) | np.isnan(values)
        # Below 2**(mantissa bits + 1) every integer has its own float; above, ids may have merged.
        limit = 2.0 ** (np.finfo(column.type.to_pandas_dtype()).nmant + 1)
        given = values[~missing]
        exact = np.isfinite(given) & (given == np.floor(given)) & (np.abs(given) < limit)
        if not exact.all():
            raise SchemaError(
                f"{path}: id column {name!r} is {kind} and holds {given[~exact][0]!r}, which is not "
                f"an integer below {limit:.0f} that a {kind} keeps exactly, so the original id is "
                "lost. Write the ids as strings (or integers) and import again."
            )
        text = np.where(missing, 0.0, values).astype(np.int64).astype(str)
        return [None if m else t for m, t in zip(missing, text.tolist())]
    if pa.types.is_decimal(kind):
        return [None if v is None else _decimal_id(v, path, name, "") for v in column.to_pylist()]
    raise SchemaError(f"{path}: id column {name!r} has type {kind}; ids must be strings or integers.")


def _decimal_id(value: Decimal, path: Path, name: str, where: str) -> str:
    if value.is_finite() and value == value.to_integral_value():
        return str(int(value))
    raise SchemaError(
        f"{path}{where}: id column {name!r} holds {value}, which is not an integer; ids must be strings or integers."
    )


def _json_id(value: Any, path: Path, name: str, line: int) -> str | None:
    """An id from a parsed JSON line: strings as they are, integers as their exact text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal):
        return _decimal_id(value, path, name, f" line {line}")
    raise SchemaError(
        f"{path} line {line}: id column {name!r} holds {json.dumps(value)[:60]}; ids must be strings or integers."
    )


def _read_json_lines(path: Path) -> pd.DataFrame:
    """One JSON object per line, numbers parsed exactly (ints as ints, the rest as Decimal)."""
    records, lines, offset, number = [], [], 0, 0
    with open_raw(path) as fh:
        for number, raw in _lines(fh, path):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SchemaError(_not_utf8_at(path, number, offset + exc.start, raw[exc.start])) from None
            offset += len(raw)
            text = (text.lstrip("\ufeff") if number == 1 else text).strip()
            if not text:
                continue
            try:
                value = json.loads(text, parse_float=Decimal)
            except (ValueError, RecursionError) as exc:
                raise SchemaError(
                    f"{path} line {number}: not JSON ({exc}); JSON lines hold one object per line"
                ) from None
            if not isinstance(value, dict):
                raise SchemaError(f"{path} line {number}: a JSON object is expected, found {type(value).__name__}")
            records.append(value)
            lines.append(number)
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {}
    for name in names:
        values = [record.get(name) for record in records]
        if name in ID_COLUMNS:
            columns[name] = pd.Series([_json_id(v, path, name, n) for v, n in zip(values, lines)], dtype=object)
        elif name == "timestamp":
            columns[name] = pd.Series(values, dtype=object)  # Decimals kept: a fraction is seen exactly
        elif name in TEXT_COLUMNS:
            # A number in a text field is the text written (title 1984, category 5), never 5.0.
            text = [str(v) if isinstance(v, (int, Decimal)) and not isinstance(v, bool) else v for v in values]
            columns[name] = pd.Series(text, dtype=object)
        else:
            columns[name] = [float(v) if isinstance(v, Decimal) else v for v in values]
    return pd.DataFrame(columns, index=pd.RangeIndex(len(records)))


def _lines(fh: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines; a gzip stream that ends early is named with the last whole line."""
    number = 0
    try:
        for number, raw in enumerate(fh, 1):
            yield number, raw
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SchemaError(_damaged_gzip(path, exc, after_line=number)) from None


def _not_utf8_at(path: Path, line: int, offset: int, byte: int) -> str:
    return (
        f"{path}: not UTF-8 text: line {line}, byte offset {offset} holds 0x{byte:02x}. "
        "Save the table as UTF-8 (from latin-1: iconv -f latin1 -t utf-8 old > new) and import again."
    )


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Name the first undecodable byte by line and offset (pandas only gives a buffer position)."""
    offset = 0
    with open_raw(path) as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return _not_utf8_at(path, number, offset + bad.start, raw[bad.start])
            offset += len(raw)
    return f"{path}: not UTF-8 text ({exc}). Save the table as UTF-8 and import again."
