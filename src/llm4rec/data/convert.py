"""Convert stage: raw Amazon JSON lines to the canonical interim parquet files.

Real files are messier than their format: numbers and lists arrive as strings (``"4.0"``,
``"['a', 'b']"``), 2014 meta lines are Python literals rather than JSON, and a third-party
re-export may carry broken lines. Every line is parsed on its own (JSON first, then
``ast.literal_eval``, never ``eval``), coerced to the canonical types, and either written in
file order or sent to ``rejects.jsonl`` with its line number and the reason. Files are read
line by line and written in row chunks, so memory does not grow with the input.

Canonical schema (the contract with preprocess):

- ``reviews.parquet``: line int64 (1-based raw line number), user_id string, item_id string,
  rating float64, timestamp int64 (nullable, unix seconds UTC), review_text string (nullable),
  summary string (nullable).
- ``items.parquet``: line int64, item_id string, title string (nullable), brand string
  (nullable), categories list<string> (empty when absent or unparseable), description string
  (nullable). Duplicate asins are all kept; raw text is not cleaned here.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from llm4rec.data.records import (
    ITEMS_SCHEMA,
    REJECT_TEXT_CHARS,
    REVIEWS_SCHEMA,
    RejectedRecord,
    item_row,
    parse_record,
    review_row,
)


class _Stats:
    """Counts of one file's conversion; bounded in size (keys are reason and coercion codes)."""

    def __init__(self, path: Path | None) -> None:
        self.path = str(path) if path is not None else None
        self.lines = 0
        self.blank = 0
        self.rows = 0
        self.rejected = 0
        self.reasons: Counter[str] = Counter()
        self.coerced: Counter[str] = Counter()
        self.formats: Counter[str] = Counter()
        self.seconds = 0.0

    def as_dict(self) -> dict:
        records = self.lines - self.blank
        return {
            "path": self.path,
            "lines": self.lines,
            "blank": self.blank,
            "records": records,
            "rows": self.rows,
            "rejected": self.rejected,
            "reject_frac": (self.rejected / records) if records else 0.0,
            "reasons": dict(sorted(self.reasons.items())),
            "coerced": dict(sorted(self.coerced.items())),
            "formats": dict(sorted(self.formats.items())),
            "seconds": round(self.seconds, 3),
        }


DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_MAX_REJECT_FRAC = 0.01
DEFAULT_CHUNK_ROWS = 50_000
_SKIP_BYTES = 1 << 20


class ConvertError(ValueError):
    """Too many rejected lines (or no usable review): the input is not what it claims to be."""


class _ChunkedParquet:
    """Parquet writer that buffers ``chunk_rows`` rows per column, then writes a row group.

    Writes to a temporary name and renames on success, so a failed run leaves no half file.
    """

    def __init__(self, path: Path, schema: pa.Schema, chunk_rows: int) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.columns: list[list] = [[] for _ in schema.names]
        self.writer = pq.ParquetWriter(self.tmp, schema)

    def add(self, row: tuple) -> None:
        for column, value in zip(self.columns, row):
            column.append(value)
        if len(self.columns[0]) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if self.columns[0]:
            arrays = [pa.array(col, type=f.type) for col, f in zip(self.columns, self.schema)]
            self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
            self.columns = [[] for _ in self.schema.names]

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def open_raw(path: Path) -> IO[bytes]:
    """Open a raw file for binary reading, gunzipping when it starts with the gzip magic.

    Detection is by content, not name: a ``url`` source may deliver plain JSON lines under
    the canonical ``.json.gz`` name.
    """
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def iter_lines(fh: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes, int | None]]:
    """Yield (line number, bytes, None), or (number, head, full length) for an overlong line.

    ``readline`` with a limit never holds more than ``max_line_bytes`` of one line, so a file
    without newlines cannot exhaust memory; the rest of an overlong line is skipped in chunks.
    """
    number = 0
    while True:
        chunk = fh.readline(max_line_bytes + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            head, length = chunk[: REJECT_TEXT_CHARS * 4], len(chunk)
            while not chunk.endswith(b"\n"):
                chunk = fh.readline(_SKIP_BYTES)
                if not chunk:
                    break
                length += len(chunk)
            yield number, head, length
        else:
            yield number, chunk, None


def _convert_file(
    label: str,
    src: Path | None,
    out_parquet: Path,
    schema: pa.Schema,
    make_row: Callable[[int, dict, Counter], tuple],
    rejects: IO[str],
    max_line_bytes: int,
    progress: bool,
    chunk_rows: int,
) -> dict:
    stats = _Stats(src)
    started = time.perf_counter()
    writer = _ChunkedParquet(out_parquet, schema, chunk_rows)
    try:
        if src is not None:
            with (
                open_raw(Path(src)) as fh,
                tqdm(
                    desc=f"convert {label}",
                    unit=" lines",
                    unit_scale=True,
                    disable=None if progress else True,
                    file=sys.stderr,
                    mininterval=1.0,
                ) as bar,
            ):
                for number, raw, overlong in iter_lines(fh, max_line_bytes):
                    stats.lines = number
                    bar.update(1)
                    try:
                        if overlong is not None:
                            raise RejectedRecord("line too long", f"{overlong} bytes > {max_line_bytes}")
                        try:
                            text = raw.decode("utf-8")
                        except UnicodeDecodeError as exc:
                            raise RejectedRecord("not UTF-8", str(exc)) from None
                        if number == 1:
                            text = text.lstrip("\ufeff")
                        text = text.strip()
                        if not text:
                            stats.blank += 1
                            continue
                        writer.add(make_row(number, parse_record(text, stats.formats), stats.coerced))
                        stats.rows += 1
                    except RejectedRecord as rej:
                        stats.rejected += 1
                        stats.reasons[rej.code] += 1
                        shown = raw.decode("utf-8", errors="replace").strip()[:REJECT_TEXT_CHARS]
                        entry = {"file": label, "line": number, "reason": rej.reason, "text": shown}
                        rejects.write(json.dumps(entry, ensure_ascii=False) + "\n")
        writer.close()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        writer.abort()
        raise ConvertError(
            f"{label} file {src}: corrupt or truncated after line {stats.lines} ({exc}); "
            "fetch the file again (delete it so the download rule reruns)"
        ) from exc
    except BaseException:
        writer.abort()
        raise
    stats.seconds = time.perf_counter() - started
    return stats.as_dict()


def convert_reviews(
    src: Path,
    out_parquet: Path,
    rejects: IO[str],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    progress: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict:
    """Convert a review file to reviews.parquet; rejects go to the open ``rejects`` file."""
    return _convert_file(
        "reviews",
        src,
        out_parquet,
        REVIEWS_SCHEMA,
        review_row,
        rejects,
        max_line_bytes,
        progress,
        chunk_rows,
    )


def convert_items(
    src: Path | None,
    out_parquet: Path,
    rejects: IO[str],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    progress: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict:
    """Convert a meta file to items.parquet (``src=None`` writes an empty table)."""
    return _convert_file(
        "meta",
        src,
        out_parquet,
        ITEMS_SCHEMA,
        item_row,
        rejects,
        max_line_bytes,
        progress,
        chunk_rows,
    )


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def keep_rejects(rejects_path: Path, copy: Path | None) -> Path:
    """The rejects file an error message should name: ``copy`` when given, after copying.

    Snakemake deletes a failed job's outputs, ``rejects.jsonl`` included; a copy beside the
    rule's log is what the user can still open.
    """
    if copy is None:
        return Path(rejects_path).resolve()
    copy = Path(copy)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rejects_path, copy)
    return copy.resolve()


def convert_dataset(
    reviews_path: Path,
    meta_path: Path | None,
    out_dir: Path,
    max_reject_frac: float = DEFAULT_MAX_REJECT_FRAC,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    progress: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    rejects_copy: Path | None = None,
) -> dict:
    """Write reviews.parquet, items.parquet, rejects.jsonl and convert.json under ``out_dir``.

    Raises :class:`ConvertError` when a file's rejected fraction exceeds ``max_reject_frac``
    or no review survives, after writing every output, so the evidence is on disk. With
    ``rejects_copy`` the rejects are also copied there on failure and the message names the
    copy (a stale copy from an earlier failure is removed first).
    """
    if not 0 <= max_reject_frac <= 1:
        raise ValueError(f"max_reject_frac must be in [0, 1], got {max_reject_frac}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rejects_copy is not None:
        Path(rejects_copy).unlink(missing_ok=True)
    rejects_path = out_dir / "rejects.jsonl"
    rejects_tmp = rejects_path.with_name(rejects_path.name + ".tmp")
    try:
        with open(rejects_tmp, "w", encoding="utf-8") as rejects:
            reviews = convert_reviews(
                Path(reviews_path),
                out_dir / "reviews.parquet",
                rejects,
                max_line_bytes,
                progress,
                chunk_rows,
            )
            meta = convert_items(
                None if meta_path is None else Path(meta_path),
                out_dir / "items.parquet",
                rejects,
                max_line_bytes,
                progress,
                chunk_rows,
            )
    except BaseException:
        rejects_tmp.unlink(missing_ok=True)
        raise
    os.replace(rejects_tmp, rejects_path)
    summary = {
        "reviews": reviews,
        "meta": meta,
        "max_reject_frac": max_reject_frac,
        "max_line_bytes": max_line_bytes,
    }
    _atomic_write_text(out_dir / "convert.json", json.dumps(summary, indent=2) + "\n")
    problems = []
    for label, stats in (("reviews", reviews), ("meta", meta)):
        if stats["reject_frac"] > max_reject_frac:
            top = ", ".join(f"{k}: {v}" for k, v in Counter(stats["reasons"]).most_common(3))
            problems.append(
                f"{label} file {stats['path']}: {stats['rejected']} of {stats['records']} lines "
                f"rejected ({stats['reject_frac']:.2%}), more than max_reject_frac "
                f"{max_reject_frac:.2%} (top reasons: {top})"
            )
    if reviews["rows"] == 0 and not problems:
        problems.append(f"reviews file {reviews['path']}: no usable review line")
    if problems:
        raise ConvertError(
            "; ".join(problems) + f". Line numbers and reasons are in {keep_rejects(rejects_path, rejects_copy)};"
            " if the input is right, raise max_reject_frac in the config."
        )
    return summary
