"""Download stage: fetch the raw review and meta files, resumably and verifiably.

Hosts of the Amazon data have moved before, so every URL comes from a template that config can
override. Transfers stream to ``<dest>.part`` (kept after a failure so the next run resumes with
an HTTP Range request) and are renamed to ``dest`` only once size, checksum and content are
verified, so an interrupted run never leaves a half file under the final name.

Beside the ``.part`` lies ``<dest>.part.json``, the URL and the validators (``ETag``,
``Last-Modified``) of the response it came from: a resume sends ``If-Range`` and starts over when
the URL or the validator differs, so bytes of two files are never spliced. A body is complete
only when the transport says so (``Content-Length``/``Content-Range`` reached, or the chunked
terminator read); one that merely stops (close-delimited) is resumed like a cut transfer.

A file that cannot be fetched can be placed by hand at :func:`by_hand_path` (not at ``dest``:
Snakemake deletes a job's existing outputs before running it); it is then used instead.
"""

from __future__ import annotations

import json
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

from llm4rec.core.hashing import CHUNK_BYTES
from llm4rec.core.locking import exclusive
from llm4rec.data.file_checks import InvalidFile, check_file

log = logging.getLogger(__name__)
DEFAULT_URL_TEMPLATES: dict[str, dict[str, str]] = {
    "amazon2018": {
        "reviews": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/{category}_5.json.gz",
        "meta": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_{category}.json.gz",
    },
    "amazon2014": {
        "reviews": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{category}_5.json.gz",
        "meta": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_{category}.json.gz",
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
            f"unknown download source {source!r}: use amazon2018, amazon2014 or url (source 'local' needs no download)"
        )
    if not category:
        raise ValueError(f"source {source!r} needs a category, e.g. 'Magazine_Subscriptions'")
    merged = dict(DEFAULT_URL_TEMPLATES.get(source, {}))
    merged.update((templates or {}).get(source) or {})
    missing = [k for k in FILE_KINDS if not merged.get(k)]
    if missing:
        raise ValueError(f"no URL template for {missing} of source {source!r}")
    return {k: merged[k].format(category=category) for k in FILE_KINDS}


def by_hand_path(dest: Path) -> Path:
    """Where a file fetched by hand goes: ``by_hand/`` beside ``dest``, never ``dest`` itself,
    which Snakemake deletes before it runs the download job."""
    dest = Path(dest)
    return dest.parent / "by_hand" / dest.name


def _by_hand(url: str, dest: Path, why: str) -> DownloadError:
    return DownloadError(
        f"cannot reach {url} ({why}); download it by hand and place it at {by_hand_path(dest).resolve()}"
    )


def _finish(tmp: Path, dest: Path, url: str, sha256: str | None, size: int | None) -> dict:
    """Check the finished download and rename it; a bad file is deleted, never kept."""
    try:
        actual_sha, actual_size = check_file(tmp, dest.name, sha256, size)
    except InvalidFile as exc:
        _discard(tmp)
        raise DownloadError(f"{url}: {exc}; the file was removed, no file was written to {dest.resolve()}") from None
    os.replace(tmp, dest)
    _sidecar(tmp).unlink(missing_ok=True)
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


def _copy(src: Path, tmp: Path, name: str, progress: bool) -> None:
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        with _progress(src.stat().st_size, 0, name, progress) as bar:
            for block in iter(lambda: fin.read(CHUNK_BYTES), b""):
                fout.write(block)
                bar.update(len(block))
        fout.flush()
        os.fsync(fout.fileno())


def _use_by_hand(hand: Path, dest: Path, url: str, sha256: str | None, size: int | None, progress: bool) -> dict:
    """Copy a hand-placed file to ``dest`` once verified; the original is left where it is."""
    log.info("%s: using the file placed by hand at %s", url, hand.resolve())
    tmp = dest.with_name(dest.name + ".tmp")
    _copy(hand, tmp, dest.name, progress)
    try:
        actual_sha, actual_size = check_file(tmp, dest.name, sha256, size)
    except InvalidFile as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(
            f"the file placed by hand at {hand.resolve()} (for {url}): {exc}; it was left "
            f"there, no file was written to {dest.resolve()}"
        ) from None
    os.replace(tmp, dest)
    return {"url": url, "sha256": actual_sha, "size": actual_size, "by_hand": str(hand.resolve())}


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


def _sidecar(part: Path) -> Path:
    """``<dest>.part.json``: the URL and validators the ``.part`` bytes came with."""
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)


def _validators(headers) -> dict[str, str | None]:
    return {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified")}


def _changed(stored: dict, found: dict[str, str | None]) -> bool:
    """Whether a validator the server sends now differs from the one the ``.part`` came with."""
    return any(value is not None and value != stored.get(key) for key, value in found.items())


def _if_range(stored: dict) -> str | None:
    """A strong ETag, else Last-Modified: If-Range accepts no weak ETag."""
    etag = stored.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return stored.get("last_modified")


def _resume_record(url: str, part: Path) -> dict | None:
    """The sidecar of a ``.part`` that may be resumed; any other ``.part`` is deleted."""
    if not part.exists():
        _sidecar(part).unlink(missing_ok=True)
        return None
    try:
        stored = json.loads(_sidecar(part).read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or stored.get("url") != url or not part.stat().st_size:
        if part.stat().st_size:
            origin = stored.get("url") if isinstance(stored, dict) else None
            log.warning("%s: %s came from %s, not this URL; starting over", url, part, origin or "an unrecorded URL")
        _discard(part)
        return None
    return stored


def _write_sidecar(part: Path, record: dict) -> None:
    tmp = part.with_name(part.name + ".json.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, _sidecar(part))


class _Retry(Exception):
    """A transient failure; ``immediate`` retries at once (the partial file was reset)."""

    def __init__(self, why: str, immediate: bool = False) -> None:
        super().__init__(why)
        self.immediate = immediate


def _http_attempt(session: requests.Session, url: str, part: Path, dest: Path, timeout: float, progress: bool) -> None:
    """One GET that appends to ``part``; raises ``_Retry`` for transient failures."""
    stored = _resume_record(url, part)
    offset = part.stat().st_size if stored else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = _if_range(stored)
        if validator:
            headers["If-Range"] = validator
    asked_range = bool(offset)
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
        found = _validators(resp.headers)
        if status == 416 and offset:
            _, total = _total_from_content_range(resp.headers.get("Content-Range"))
            if total == offset and not _changed(stored, found):
                return
            log.warning("%s: server rejected resume at byte %d; restarting", url, offset)
            _discard(part)
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
                _discard(part)
                raise _Retry("bad Content-Range", immediate=offset > 0)
            if offset and _changed(stored, found):
                log.warning(
                    "%s: the file changed on the server (%s, was %s); restarting",
                    url,
                    found,
                    {k: stored.get(k) for k in found},
                )
                _discard(part)
                raise _Retry("file changed on the server", immediate=True)
        else:
            if offset:
                log.warning("%s: server answered 200 to a Range request; restarting from 0", url)
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if offset == 0:
            _discard(part)
            _write_sidecar(part, {"url": url, **found})
        received = 0
        # Raw bytes (no Content-Encoding decoding) so Range offsets and the checksum refer to
        # the file as served; read1 hands over every byte that arrived before a cut.
        try:
            with open(part, "ab") as fh, _progress(total, offset, dest.name, progress) as bar:
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
        if total is not None:
            if offset + received != total:
                raise _Retry(f"transfer cut at {offset + received} of {total} bytes")
        elif not resp.raw.chunked:
            # A close-delimited body looks the same whether it ended or was cut: ask for the
            # rest; a 416 naming this size (or a 206 with the rest) proves the end.
            raise _Retry(
                f"body ended after {offset + received} bytes without Content-Length or chunked "
                "encoding, so it may be cut",
                immediate=not asked_range and received > 0,
            )


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

    A file at :func:`by_hand_path` is used instead of downloading (record key ``by_hand``).
    Resumes ``dest.part`` with a Range request, retries mid-transfer failures and 5xx answers
    with exponential backoff (``backoff * 2**k`` seconds, at most ``retries`` retries), and
    fails at once, naming where to place the file by hand, on a refused connection, an unknown
    host or a 4xx answer. ``sha256``/``size`` are verified when given, gzip and JSON-lines
    content always; the returned record is what a config can pin next time. The download
    holds ``<dest>.part.lock`` throughout: a second process fetching the same file at the
    same time stops at once with :class:`llm4rec.core.locking.LockedError` naming the first.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(dest.with_name(dest.name + ".part.lock"), f"the download of {dest}"):
        return _fetch(url, dest, sha256, size, retries, backoff, timeout, progress)


def _fetch(
    url: str,
    dest: Path,
    sha256: str | None,
    size: int | None,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
) -> dict:
    """:func:`fetch` once it holds the download's lock (no other process writes ``.part``)."""
    hand = by_hand_path(dest)
    if hand.is_file():
        return _use_by_hand(hand, dest, url, sha256, size, progress)
    scheme = urlparse(url).scheme
    if scheme == "file":
        src = Path(url2pathname(unquote(urlparse(url).path)))
        if not src.is_file():
            raise _by_hand(url, dest, f"no such file {src}")
        tmp = dest.with_name(dest.name + ".tmp")
        _copy(src, tmp, dest.name, progress)
        return _finish(tmp, dest, url, sha256, size)
    if scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL scheme in {url!r}: use http(s):// or file://")
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        log.info("%s: found %s (%d bytes)", url, part, part.stat().st_size)
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
                    if part.exists() and part.stat().st_size:
                        kept = (
                            f"the partial file {part.resolve()} ({part.stat().st_size} "
                            "bytes) is kept and the next run resumes it"
                        )
                    else:
                        _discard(part)
                        kept = "nothing was kept"
                    raise DownloadError(
                        f"{url}: giving up after {attempt + 1} attempts ({exc}); {kept}; or "
                        f"download it by hand and place it at {hand.resolve()}"
                    ) from exc
                delay = backoff * (2**attempt)
                log.warning("%s: %s; retry %d/%d in %.1fs", url, exc, attempt + 1, retries, delay)
                time.sleep(delay)
                attempt += 1
    return _finish(part, dest, url, sha256, size)


def fetch_source(
    urls: dict[str, str],
    out_dir: Path,
    expected: dict | None = None,
    **kwargs,
) -> dict[str, dict]:
    """Fetch the "reviews" and "meta" URLs to ``out_dir/{reviews,meta}.json.gz`` (the `download` rule).

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
