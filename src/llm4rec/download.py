"""Download stage: fetch the raw review and meta files, resumably and verifiably.

Hosts of the Amazon data have moved before, so every URL comes from a template that config can
override. Transfers stream to ``<dest>.part`` (kept after a failure so the next run resumes with
an HTTP Range request) and are renamed to ``dest`` only once size and checksum are verified, so
an interrupted run never leaves a half file under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import requests
import urllib3.exceptions
from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20

DEFAULT_URL_TEMPLATES: dict[str, dict[str, str]] = {
    "amazon2018": {
        "reviews": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"
        "categoryFilesSmall/{category}_5.json.gz",
        "meta": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"
        "metaFiles2/meta_{category}.json.gz",
    },
    "amazon2014": {
        "reviews": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
        "reviews_{category}_5.json.gz",
        "meta": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
        "meta_{category}.json.gz",
    },
}

FILE_KINDS = ("reviews", "meta")


class DownloadError(RuntimeError):
    """A download that cannot succeed by retrying, or a file that failed verification."""


def source_urls(
    source: str,
    category: str | None,
    templates: dict | None = None,
    explicit: dict | None = None,
) -> dict[str, str]:
    """Map "reviews"/"meta" to URLs for a source, so a mirror is one config setting away.

    ``templates`` overrides :data:`DEFAULT_URL_TEMPLATES` per source (a partial override keeps
    the defaults for the keys it does not name); ``explicit`` gives the URLs of source ``url``.
    """
    if source == "url":
        if not explicit:
            raise ValueError("source 'url' needs explicit URLs for 'reviews' and 'meta'")
        missing = [k for k in FILE_KINDS if not explicit.get(k)]
        if missing:
            raise ValueError(f"source 'url' lacks a URL for {missing}")
        urls = {k: str(explicit[k]) for k in FILE_KINDS}
        for kind, url in urls.items():
            scheme = urlparse(url).scheme
            if scheme not in ("http", "https", "file"):
                raise ValueError(f"{kind} URL {url!r}: only http(s):// and file:// are supported")
        return urls
    if source not in DEFAULT_URL_TEMPLATES and source not in (templates or {}):
        raise ValueError(
            f"unknown download source {source!r}: use amazon2018, amazon2014 or url "
            "(source 'local' needs no download)"
        )
    if not category:
        raise ValueError(f"source {source!r} needs a category, e.g. 'Magazine_Subscriptions'")
    merged = dict(DEFAULT_URL_TEMPLATES.get(source, {}))
    merged.update((templates or {}).get(source) or {})
    missing = [k for k in FILE_KINDS if not merged.get(k)]
    if missing:
        raise ValueError(f"no URL template for {missing} of source {source!r}")
    return {k: merged[k].format(category=category) for k in FILE_KINDS}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _by_hand(url: str, dest: Path, why: str) -> DownloadError:
    return DownloadError(
        f"cannot reach {url} ({why}); download it by hand and place it at {dest.resolve()}"
    )


def _verify(part: Path, dest: Path, url: str, sha256: str | None, size: int | None) -> dict:
    """Check the finished ``.part`` file and rename it; a bad file is deleted, never kept."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != int(size):
        part.unlink()
        raise DownloadError(
            f"{url}: size mismatch, expected {int(size)} bytes, got {actual_size}; "
            f"the partial file was removed, no file was written to {dest.resolve()}"
        )
    actual_sha = sha256_file(part)
    if sha256 is not None and actual_sha.lower() != sha256.strip().lower():
        part.unlink()
        raise DownloadError(
            f"{url}: sha256 mismatch, expected {sha256.strip().lower()}, got {actual_sha}; "
            f"the file was removed, no file was written to {dest.resolve()}"
        )
    os.replace(part, dest)
    return {"url": url, "sha256": actual_sha, "size": actual_size}


def _progress(total: int | None, initial: int, name: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=None if enabled else True,
        file=sys.stderr,
    )


def _copy_file_url(url: str, part: Path, dest: Path, progress: bool) -> None:
    src = Path(url2pathname(unquote(urlparse(url).path)))
    if not src.is_file():
        raise _by_hand(url, dest, f"no such file {src}")
    with open(src, "rb") as fin, open(part, "wb") as fout:
        with _progress(src.stat().st_size, 0, dest.name, progress) as bar:
            for block in iter(lambda: fin.read(CHUNK_BYTES), b""):
                fout.write(block)
                bar.update(len(block))
        fout.flush()
        os.fsync(fout.fileno())


def _is_unreachable(exc: requests.ConnectionError) -> str | None:
    """The reason if ``exc`` is a refused connection or an unknown host, else None."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "unknown host"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "connection refused or network unreachable"
    return None


def _total_from_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from a ``Content-Range: bytes a-b/N`` or ``bytes */N`` header."""
    if not value or not value.startswith("bytes "):
        return None, None
    spec, _, total = value[6:].partition("/")
    start = None if spec == "*" else int(spec.split("-")[0])
    return start, (int(total) if total.isdigit() else None)


class _Retry(Exception):
    """A transient failure; ``immediate`` retries at once (the partial file was reset)."""

    def __init__(self, why: str, immediate: bool = False) -> None:
        super().__init__(why)
        self.immediate = immediate


def _http_attempt(
    session: requests.Session, url: str, part: Path, dest: Path, timeout: float, progress: bool
) -> None:
    """One GET that appends to ``part``; raises ``_Retry`` for transient failures."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = session.get(url, stream=True, timeout=timeout, headers=headers)
    except requests.ConnectionError as exc:
        why = _is_unreachable(exc)
        if why:
            raise _by_hand(url, dest, why) from exc
        raise _Retry(f"connection error: {exc}") from exc
    except requests.Timeout as exc:
        raise _Retry(f"timeout: {exc}") from exc
    with resp:
        status = resp.status_code
        if status == 416 and offset:
            _, total = _total_from_content_range(resp.headers.get("Content-Range"))
            if total == offset:
                return
            log.warning("%s: server rejected resume at byte %d; restarting", url, offset)
            part.unlink()
            raise _Retry("range not satisfiable", immediate=True)
        if status >= 500 or status in (408, 429):
            raise _Retry(f"HTTP {status}")
        if status in (404, 410):
            raise _by_hand(url, dest, f"HTTP {status} not found")
        if status >= 400:
            raise _by_hand(url, dest, f"HTTP {status}")
        if status == 206:
            start, total = _total_from_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                log.warning("%s: server resumed at %s, not %d; restarting", url, start, offset)
                part.unlink(missing_ok=True)
                raise _Retry("bad Content-Range", immediate=offset > 0)
            mode = "ab"
        else:
            if offset:
                log.warning("%s: server ignored the Range request; restarting from 0", url)
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = 0
        # Raw bytes (no Content-Encoding decoding) so Range offsets and the checksum refer to
        # the file as served; read1 hands over every byte that arrived before a cut.
        try:
            with open(part, mode) as fh, _progress(total, offset, dest.name, progress) as bar:
                for block in iter(lambda: resp.raw.read1(CHUNK_BYTES, decode_content=False), b""):
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
        ) as exc:
            raise _Retry(f"transfer cut after {offset + received} bytes: {exc}") from exc
        if total is not None and offset + received != total:
            raise _Retry(f"transfer cut at {offset + received} of {total} bytes")


def fetch(
    url: str,
    dest: Path,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60,
    progress: bool = True,
) -> dict:
    """Download ``url`` (http, https or file) to ``dest`` atomically; return url, sha256, size.

    Resumes ``dest.part`` with a Range request, retries mid-transfer failures and 5xx answers
    with exponential backoff (``backoff * 2**k`` seconds, at most ``retries`` retries), and
    fails at once, naming where to place the file by hand, on a refused connection, an unknown
    host or a 4xx answer. ``sha256``/``size`` are verified when given; the returned record is
    what a config can pin next time.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    scheme = urlparse(url).scheme
    if scheme == "file":
        _copy_file_url(url, part, dest, progress)
        return _verify(part, dest, url, sha256, size)
    if scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL scheme in {url!r}: use http(s):// or file://")
    if part.exists():
        log.info("%s: resuming %s from byte %d", url, part, part.stat().st_size)
    attempt = 0
    with requests.Session() as session:
        while True:
            try:
                _http_attempt(session, url, part, dest, timeout, progress)
                break
            except _Retry as exc:
                if exc.immediate:
                    continue
                if attempt >= retries:
                    raise DownloadError(
                        f"{url}: giving up after {attempt + 1} attempts ({exc}); the partial "
                        f"file {part.resolve()} is kept and the next run resumes it, or place "
                        f"the file by hand at {dest.resolve()}"
                    ) from exc
                delay = backoff * (2**attempt)
                log.warning("%s: %s; retry %d/%d in %.1fs", url, exc, attempt + 1, retries, delay)
                time.sleep(delay)
                attempt += 1
    return _verify(part, dest, url, sha256, size)


def fetch_source(
    urls: dict[str, str],
    out_dir: Path,
    expected: dict | None = None,
    **kwargs,
) -> dict[str, dict]:
    """Fetch the "reviews" and "meta" URLs to ``out_dir/{reviews,meta}.json.gz``.

    ``expected`` maps a kind to ``{"sha256": ..., "size": ...}`` (either may be missing);
    the returned records hold what was measured, for the caller to log or pin.
    """
    out_dir = Path(out_dir)
    records = {}
    for kind in FILE_KINDS:
        want = (expected or {}).get(kind) or {}
        records[kind] = fetch(
            urls[kind],
            out_dir / f"{kind}.json.gz",
            sha256=want.get("sha256"),
            size=want.get("size"),
            **kwargs,
        )
    return records

