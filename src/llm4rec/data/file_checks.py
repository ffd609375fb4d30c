"""Checks that a downloaded (or hand-placed) raw file is what it claims: gzip and JSON-lines
integrity, size and sha256 (docs/method.md 2.1)."""

from __future__ import annotations

import ast
import gzip
import json
import os
import zlib
from pathlib import Path

from llm4rec.core.hashing import CHUNK_BYTES, sha256_file


class InvalidFile(ValueError):
    """A finished file that is not what was asked for (size, checksum or truncated content)."""


def _check_gzip(path: Path) -> None:
    """Decompress to the end, streaming: the gzip trailer (CRC, length) proves completeness."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(CHUNK_BYTES):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise InvalidFile(f"not a complete gzip file ({exc})") from None


def _last_line(path: Path) -> bytes | None:
    """The last non-blank line, or None when the file does not end with a newline."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return None
        fh.seek(end - 1)
        if fh.read(1) != b"\n":
            return None
        tail, pos = b"", end
        while pos > 0:
            step = min(CHUNK_BYTES, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            text = tail.rstrip()
            if b"\n" in text:
                return text.rsplit(b"\n", 1)[1]
        return tail.strip()


def _check_json_lines(path: Path) -> None:
    """The file ends with a newline after a whole record, which a cut body almost never does."""
    line = _last_line(path)
    if line is None:
        raise InvalidFile("JSON-lines file does not end with a newline (cut mid-record?)")
    text = line.decode("utf-8", errors="replace")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        try:  # amazon2014 meta lines are Python literals
            record = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            record = None
    if not isinstance(record, dict):
        raise InvalidFile(f"the last line of the JSON-lines file is not a whole record: {text[:80]!r}")


def _check_content(path: Path, name: str) -> None:
    """Gzip (by content, as convert reads it) must decompress; plain JSON lines must end whole."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        _check_gzip(path)
    elif ".json" in name:
        _check_json_lines(path)


def check_file(path: Path, name: str, sha256: str | None, size: int | None) -> tuple[str, int]:
    """(sha256, size) of a finished file; raises ``InvalidFile`` when it is not the file wanted."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != int(size):
        raise InvalidFile(f"size mismatch, expected {int(size)} bytes, got {actual_size}")
    actual_sha = sha256_file(path)
    if sha256 is not None and actual_sha.lower() != sha256.strip().lower():
        raise InvalidFile(f"sha256 mismatch, expected {sha256.strip().lower()}, got {actual_sha}")
    _check_content(path, name)
    return actual_sha, actual_size
