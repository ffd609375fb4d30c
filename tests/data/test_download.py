"""Download stage against a real HTTP server on 127.0.0.1 that the tests control."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import runpy
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from llm4rec.data.download import DEFAULT_URL_TEMPLATES, DownloadError, by_hand_path, fetch, fetch_source, source_urls

SCRIPT = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "download.py"

_RNG = random.Random(0)
# A real gzip file (stored blocks, so it stays over 3 MiB), as the pipeline downloads.
PAYLOAD = gzip.compress(_RNG.randbytes(3 * 1024 * 1024 + 517), compresslevel=0, mtime=0)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = gzip.compress(_RNG.randbytes(3 * 1024 * 1024 + 517), compresslevel=0, mtime=0)
JSONL = b"".join(
    json.dumps({"user": f"u{i}", "text": _RNG.randbytes(40).hex()}).encode() + b"\n" for i in range(20_000)
)
# A cut at a line boundary: the content looks whole, only the transport can tell.
LINE_CUT = JSONL.index(b"\n", int(len(JSONL) * 0.58)) + 1


class _State:
    """What the server does next; the tests change it between calls."""

    def __init__(self) -> None:
        self.files = {"/data.bin": PAYLOAD}
        self.etags: dict[str, str] = {}
        self.last_modified: dict[str, str] = {}
        self.framing = "length"  # or "close" (no Content-Length) or "chunked"
        self.fail_5xx = 0
        self.cut_after: int | None = None
        self.cut_times = 0
        self.honor_range = True
        self.honor_if_range = True
        self.seconds_per_mib = 0.0  # > 0: a slow server, so that a transfer lasts a while
        self.requests: list[tuple[str, str | None]] = []
        self.if_ranges: list[str | None] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        state: _State = self.server.state
        with state.lock:
            state.requests.append((self.path, self.headers.get("Range")))
            state.if_ranges.append(self.headers.get("If-Range"))
            if state.fail_5xx > 0:
                state.fail_5xx -= 1
                self.send_error(503, "busy")
                return
            cut = state.cut_after if state.cut_times > 0 else None
            if cut is not None:
                state.cut_times -= 1
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "no such file")
            return
        etag, modified = state.etags.get(self.path), state.last_modified.get(self.path)
        if_range = self.headers.get("If-Range")
        fresh = if_range is None or not state.honor_if_range or if_range in (etag, modified)
        start = 0
        rng = self.headers.get("Range")
        if state.framing == "chunked":
            self.protocol_version = "HTTP/1.1"
        if rng and state.honor_range and fresh:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if etag:
            self.send_header("ETag", etag)
        if modified:
            self.send_header("Last-Modified", modified)
        chunk = body[start:]
        sent = chunk if cut is None else chunk[:cut]
        if state.framing == "length":
            self.send_header("Content-Length", str(len(chunk)))
        elif state.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if state.framing == "chunked":
            for i in range(0, len(sent), 65536):
                piece = sent[i : i + 65536]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if cut is None:
                self.wfile.write(b"0\r\n\r\n")
        elif state.seconds_per_mib:
            for i in range(0, len(sent), 65536):
                self.wfile.write(sent[i : i + 65536])
                self.wfile.flush()
                time.sleep(state.seconds_per_mib / 16)
        else:
            self.wfile.write(sent)
        if cut is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Talk to 127.0.0.1 and the resolver directly, whatever proxy the machine sets."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, httpd.state
    httpd.shutdown()
    httpd.server_close()


def _fetch(url: str, dest: Path, **kwargs) -> dict:
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("timeout", 10)
    kwargs.setdefault("progress", False)
    return fetch(url, dest, **kwargs)


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def test_cut_transfer_resumes_with_range_and_completes(server, tmp_path):
    base, state = server
    state.cut_after, state.cut_times = 1_000_003, 1
    dest = tmp_path / "raw" / "reviews.json.gz"
    record = _fetch(f"{base}/data.bin", dest, sha256=SHA, size=len(PAYLOAD))
    assert record == {"url": f"{base}/data.bin", "sha256": SHA, "size": len(PAYLOAD)}
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["reviews.json.gz"]
    assert len(state.requests) == 2
    assert state.requests[0][1] is None
    resumed_at = int(state.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert resumed_at == 1_000_003  # every byte received before the cut was kept


def test_interrupted_run_keeps_part_and_next_run_resumes(server, tmp_path):
    base, state = server
    state.cut_after, state.cut_times = 700_001, 1
    dest = tmp_path / "meta.json.gz"
    part = tmp_path / "meta.json.gz.part"
    with pytest.raises(DownloadError, match="giving up after 1 attempts") as info:
        _fetch(f"{base}/data.bin", dest, sha256=SHA, retries=0)
    assert f"the partial file {part.resolve()} (700001 bytes) is kept" in str(info.value)
    assert not dest.exists()
    assert part.stat().st_size == 700_001
    assert json.loads(_sidecar(dest).read_text())["url"] == f"{base}/data.bin"
    record = _fetch(f"{base}/data.bin", dest, sha256=SHA)
    assert record["sha256"] == SHA and dest.read_bytes() == PAYLOAD
    assert state.requests[-1][1] == "bytes=700001-"
    assert not part.exists() and not _sidecar(dest).exists()


def test_complete_part_file_is_finished_after_416(server, tmp_path):
    base, state = server
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    _sidecar(dest).write_text(json.dumps({"url": f"{base}/data.bin"}))
    assert _fetch(f"{base}/data.bin", dest, sha256=SHA)["size"] == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    base, state = server
    state.honor_range = False
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another file" * 100)
    _sidecar(dest).write_text(json.dumps({"url": f"{base}/data.bin"}))
    record = _fetch(f"{base}/data.bin", dest)
    assert record["sha256"] == SHA and dest.read_bytes() == PAYLOAD
    assert state.requests[0][1] is not None


def test_part_from_another_url_is_not_resumed(server, tmp_path):
    base, state = server
    state.files["/other.bin"] = OTHER
    state.cut_after, state.cut_times = 900_000, 1
    dest = tmp_path / "reviews.json.gz"
    with pytest.raises(DownloadError, match="giving up"):
        _fetch(f"{base}/other.bin", dest, retries=0)
    assert (tmp_path / "reviews.json.gz.part").stat().st_size == 900_000
    record = _fetch(f"{base}/data.bin", dest)
    assert record["sha256"] == SHA and dest.read_bytes() == PAYLOAD
    assert state.requests[1:] == [("/data.bin", None)]


@pytest.mark.parametrize(
    ("validator", "honor_if_range"),
    [("etag", True), ("etag", False), ("last_modified", True)],
)
def test_part_of_a_changed_file_starts_over(server, tmp_path, validator, honor_if_range):
    base, state = server
    state.honor_if_range = honor_if_range
    versions = state.etags if validator == "etag" else state.last_modified
    old = '"v1"' if validator == "etag" else "Mon, 01 Jan 2024 00:00:00 GMT"
    versions["/data.bin"] = old
    state.files["/data.bin"] = OTHER
    state.cut_after, state.cut_times = 800_000, 1
    dest = tmp_path / "meta.json.gz"
    with pytest.raises(DownloadError, match="giving up"):
        _fetch(f"{base}/data.bin", dest, retries=0)
    assert json.loads(_sidecar(dest).read_text())[validator] == old
    state.files["/data.bin"] = PAYLOAD
    versions["/data.bin"] = '"v2"' if validator == "etag" else "Tue, 02 Jan 2024 00:00:00 GMT"
    record = _fetch(f"{base}/data.bin", dest)
    assert record["sha256"] == SHA and dest.read_bytes() == PAYLOAD
    assert state.requests[1] == ("/data.bin", "bytes=800000-")
    assert state.if_ranges[1] == old
    assert not _sidecar(dest).exists()


def test_close_delimited_body_cut_is_resumed_not_accepted(server, tmp_path):
    base, state = server
    state.files["/reviews.json"] = JSONL
    state.framing = "close"
    state.cut_after, state.cut_times = LINE_CUT, 1
    dest = tmp_path / "reviews.json.gz"
    record = _fetch(f"{base}/reviews.json", dest)
    assert dest.read_bytes() == JSONL
    assert record["size"] == len(JSONL)
    assert record["sha256"] == hashlib.sha256(JSONL).hexdigest()
    assert state.requests[1] == ("/reviews.json", f"bytes={LINE_CUT}-")


def test_close_delimited_whole_body_is_confirmed_by_a_range_request(server, tmp_path):
    base, state = server
    state.framing = "close"
    dest = tmp_path / "reviews.json.gz"
    assert _fetch(f"{base}/data.bin", dest, backoff=30)["sha256"] == SHA
    assert state.requests == [("/data.bin", None), ("/data.bin", f"bytes={len(PAYLOAD)}-")]


def test_close_delimited_body_that_never_completes_fails_clearly(server, tmp_path):
    base, state = server
    state.files["/reviews.json"] = JSONL
    state.framing, state.honor_range = "close", False
    state.cut_after, state.cut_times = LINE_CUT, 100
    dest = tmp_path / "reviews.json.gz"
    with pytest.raises(DownloadError) as info:
        _fetch(f"{base}/reviews.json", dest, retries=2)
    message = str(info.value)
    assert f"{base}/reviews.json: giving up after 3 attempts" in message
    assert "without Content-Length or chunked encoding" in message
    assert not dest.exists()


def test_chunked_body_is_complete_at_its_terminator(server, tmp_path):
    base, state = server
    state.framing = "chunked"
    dest = tmp_path / "reviews.json.gz"
    assert _fetch(f"{base}/data.bin", dest, sha256=SHA)["size"] == len(PAYLOAD)
    assert state.requests == [("/data.bin", None)]


def test_chunked_body_cut_before_its_terminator_is_resumed(server, tmp_path):
    base, state = server
    state.framing = "chunked"
    state.cut_after, state.cut_times = 1_200_000, 1
    dest = tmp_path / "reviews.json.gz"
    assert _fetch(f"{base}/data.bin", dest)["sha256"] == SHA
    assert dest.read_bytes() == PAYLOAD
    assert len(state.requests) == 2 and state.requests[1][1] is not None


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (PAYLOAD[:-1000], "not a complete gzip file"),
        (JSONL[: LINE_CUT - 7], "does not end with a newline"),
        (JSONL[:LINE_CUT] + b'{"user": "u1", "te\n', "last line .* is not a whole record"),
        (b"<html>Moved</html>\n", "last line .* is not a whole record"),
    ],
    ids=["cut-gzip", "no-final-newline", "cut-record", "html"],
)
def test_truncated_file_served_whole_is_refused(server, tmp_path, body, match):
    base, state = server
    state.files["/reviews.json.gz"] = body
    dest = tmp_path / "reviews.json.gz"
    with pytest.raises(DownloadError, match=f"{base}/reviews.json.gz: .*{match}"):
        _fetch(f"{base}/reviews.json.gz", dest)
    assert list(tmp_path.iterdir()) == []


def test_plain_json_lines_and_python_literal_lines_are_accepted(server, tmp_path):
    base, state = server
    state.files["/reviews.json"] = JSONL
    state.files["/meta.json"] = b"{'asin': 'B1', 'title': 'x'}\n{'asin': 'B2'}\n\n"
    assert _fetch(f"{base}/reviews.json", tmp_path / "reviews.json.gz")["size"] == len(JSONL)
    assert _fetch(f"{base}/meta.json", tmp_path / "meta.json.gz")["size"] == 45


def test_5xx_answers_are_retried_with_backoff(server, tmp_path):
    base, state = server
    state.fail_5xx = 2
    dest = tmp_path / "f.bin"
    assert _fetch(f"{base}/data.bin", dest, sha256=SHA)["sha256"] == SHA
    assert len(state.requests) == 3


def test_persistent_5xx_gives_up_without_claiming_a_partial_file(server, tmp_path):
    base, state = server
    state.fail_5xx = 10
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="giving up after 3 attempts .HTTP 503") as info:
        _fetch(f"{base}/data.bin", dest, retries=2)
    message = str(info.value)
    assert "partial" not in message and "nothing was kept" in message
    assert message.endswith(f"place it at {by_hand_path(dest).resolve()}")
    assert len(state.requests) == 3 and list(tmp_path.iterdir()) == []


def test_persistent_5xx_after_a_cut_names_the_kept_partial_file(server, tmp_path):
    base, state = server
    state.cut_after, state.cut_times = 500_000, 1
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError):
        _fetch(f"{base}/data.bin", dest, retries=0)
    state.fail_5xx = 10
    with pytest.raises(DownloadError, match="HTTP 503") as info:
        _fetch(f"{base}/data.bin", dest, retries=1)
    part = tmp_path / "f.bin.part"
    assert f"the partial file {part.resolve()} (500000 bytes) is kept" in str(info.value)
    assert part.stat().st_size == 500_000


def test_sha256_mismatch_fails_and_leaves_no_file(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        _fetch(f"{base}/data.bin", dest, sha256="0" * 64)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_fails_and_leaves_no_file(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    with pytest.raises(DownloadError, match="size mismatch"):
        _fetch(f"{base}/data.bin", dest, size=len(PAYLOAD) + 1)
    assert list(tmp_path.iterdir()) == []


def test_no_checksum_given_records_it(server, tmp_path):
    base, _ = server
    records = fetch_source(
        {"reviews": f"{base}/data.bin", "meta": f"{base}/data.bin"},
        tmp_path / "raw",
        expected={"meta": {"sha256": SHA}},
        backoff=0.01,
        progress=False,
    )
    assert records["reviews"] == {"url": f"{base}/data.bin", "sha256": SHA, "size": len(PAYLOAD)}
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["meta.json.gz", "reviews.json.gz"]


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "url",
    [f"http://127.0.0.1:{_refused_port()}/reviews.json.gz", "http://llm4rec-no-such-host.invalid/reviews.json.gz"],
    ids=["refused", "unknown-host"],
)
def test_unreachable_host_fails_at_once_saying_where_to_put_the_file(url, tmp_path):
    dest = tmp_path / "raw" / "reviews.json.gz"
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, backoff=30, progress=False)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert f"cannot reach {url}" in message
    hand = tmp_path / "raw" / "by_hand" / "reviews.json.gz"
    assert message.endswith(f"download it by hand and place it at {hand.resolve()}")
    assert not dest.exists()


def test_404_fails_at_once_saying_where_to_put_the_file(server, tmp_path):
    base, state = server
    dest = tmp_path / "meta.json.gz"
    hand = by_hand_path(dest).resolve()
    with pytest.raises(DownloadError, match="HTTP 404.*place it at " + re.escape(str(hand))):
        _fetch(f"{base}/missing.json.gz", dest, backoff=30)
    assert len(state.requests) == 1


def _placed_at(exc: pytest.ExceptionInfo) -> Path:
    """The path the error message tells the user to put the file at."""
    return Path(str(exc.value).rsplit("place it at ", 1)[1])


@pytest.mark.parametrize("sha256", [SHA, None], ids=["pinned", "unpinned"])
def test_file_placed_where_the_message_says_is_used(tmp_path, sha256):
    url = f"http://127.0.0.1:{_refused_port()}/reviews.json.gz"
    dest = tmp_path / "raw" / "reviews.json.gz"
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, progress=False)
    hand = _placed_at(info)
    hand.parent.mkdir(parents=True)
    hand.write_bytes(PAYLOAD)
    record = fetch(url, dest, sha256=sha256, progress=False)
    assert record == {"url": url, "sha256": SHA, "size": len(PAYLOAD), "by_hand": str(hand)}
    assert dest.read_bytes() == PAYLOAD and hand.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("body", "sha256", "match"),
    [(PAYLOAD, "0" * 64, "sha256 mismatch"), (PAYLOAD[:-10], None, "not a complete gzip")],
    ids=["checksum", "cut-gzip"],
)
def test_bad_file_placed_by_hand_fails_naming_it(tmp_path, body, sha256, match):
    url = f"http://127.0.0.1:{_refused_port()}/meta.json.gz"
    dest = tmp_path / "raw" / "meta.json.gz"
    hand = by_hand_path(dest)
    hand.parent.mkdir(parents=True)
    hand.write_bytes(body)
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, sha256=sha256, progress=False)
    message = str(info.value)
    assert f"the file placed by hand at {hand.resolve()}" in message
    assert re.search(match, message)
    assert hand.read_bytes() == body
    assert sorted(p.name for p in dest.parent.iterdir()) == ["by_hand"]


class _Output(dict):
    """Snakemake's output: by name and by key."""

    __getattr__ = dict.__getitem__


def test_download_script_records_hand_placed_files(tmp_path):
    raw = tmp_path / "resources" / "raw" / "beauty"
    port = _refused_port()
    output = {k: str(raw / f"{k}.json.gz") for k in ("reviews", "meta")}
    snakemake = SimpleNamespace(
        log=[str(tmp_path / "download.log")],
        output=_Output(record=str(raw / "download.json"), **output),
        params=SimpleNamespace(
            download={
                "urls": {k: f"http://127.0.0.1:{port}/{k}.json.gz" for k in output},
                "sha256": {"reviews": SHA, "meta": None},
                "size": {"reviews": None, "meta": None},
                "retries": 0,
                "backoff": 0.01,
                "timeout": 5,
            }
        ),
    )
    with pytest.raises(DownloadError) as info:
        runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake})
    hand = _placed_at(info)
    assert hand == (raw / "by_hand" / "reviews.json.gz").resolve()
    hand.parent.mkdir(parents=True)
    hand.write_bytes(PAYLOAD)
    (hand.parent / "meta.json.gz").write_bytes(JSONL)
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake})
    record = json.loads((raw / "download.json").read_text())
    assert record["reviews"]["sha256"] == SHA and record["reviews"]["size"] == len(PAYLOAD)
    assert record["meta"] == {
        "url": f"http://127.0.0.1:{port}/meta.json.gz",
        "sha256": hashlib.sha256(JSONL).hexdigest(),
        "size": len(JSONL),
        "by_hand": str(hand.parent / "meta.json.gz"),
    }


def test_file_url_copies_atomically_and_checks(tmp_path):
    src = tmp_path / "src dir" / "meta.json.gz"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "raw" / "meta.json.gz"
    record = fetch(src.as_uri(), dest, sha256=SHA.upper(), progress=False)
    assert record == {"url": src.as_uri(), "sha256": SHA, "size": len(PAYLOAD)}
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(src.as_uri(), tmp_path / "other.gz", sha256="1" * 64, progress=False)
    assert not (tmp_path / "other.gz").exists()
    missing = (tmp_path / "nope.gz").as_uri()
    with pytest.raises(DownloadError, match="download it by hand and place it at"):
        fetch(missing, tmp_path / "x.gz", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "src dir"]


def test_source_urls():
    urls = source_urls("amazon2018", "Magazine_Subscriptions", {}, None)
    assert urls["reviews"].endswith("/Magazine_Subscriptions_5.json.gz")
    assert urls["meta"].endswith("/meta_Magazine_Subscriptions.json.gz")
    urls = source_urls("amazon2014", "Beauty", None, None)
    assert urls["reviews"].endswith("/reviews_Beauty_5.json.gz")
    assert urls["meta"].endswith("/meta_Beauty.json.gz")
    mirror = {"amazon2018": {"reviews": "http://mirror.example/{category}_5.json.gz"}}
    urls = source_urls("amazon2018", "Beauty", mirror, None)
    assert urls["reviews"] == "http://mirror.example/Beauty_5.json.gz"
    assert urls["meta"] == DEFAULT_URL_TEMPLATES["amazon2018"]["meta"].format(category="Beauty")
    explicit = {"reviews": "file:///data/r.json.gz", "meta": "https://x.example/m.json.gz"}
    assert source_urls("url", None, {}, explicit) == explicit
    with pytest.raises(ValueError, match="needs a category"):
        source_urls("amazon2018", None, {}, None)
    with pytest.raises(ValueError, match="unknown download source"):
        source_urls("local", "Beauty", {}, None)
    with pytest.raises(ValueError, match="only http"):
        source_urls("url", None, {}, {"reviews": "ftp://x/r", "meta": "file:///m"})
    with pytest.raises(ValueError, match="lacks a URL"):
        source_urls("url", None, {}, {"reviews": "file:///r"})


_FETCH = (
    "import sys; from llm4rec.data.download import fetch; fetch(sys.argv[1], sys.argv[2], progress=False, backoff=0.01)"
)


def test_a_second_process_on_the_same_download_stops_naming_the_first(server, tmp_path):
    """Two real processes fetch one file (Snakemake's locks may let a second run through):
    the second stops at once, naming the first and the lock, and the first's file is whole."""
    import subprocess
    import sys

    base, state = server
    state.seconds_per_mib = 1.5
    dest = tmp_path / "reviews.json.gz"
    part = dest.with_name(dest.name + ".part")
    first = subprocess.Popen([sys.executable, "-c", _FETCH, f"{base}/data.bin", str(dest)], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (part.is_file() and part.stat().st_size) and time.time() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first download ended before the second started"
    second = subprocess.run(
        [sys.executable, "-c", _FETCH, f"{base}/data.bin", str(dest)], capture_output=True, text=True, timeout=60
    )
    assert first.poll() is None, "the first download ended before the second was refused"
    assert second.returncode != 0
    assert "LockedError" in second.stderr and f"pid {first.pid} " in second.stderr
    assert f"lock file {dest}.part.lock" in second.stderr and f"the download of {dest}" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == SHA
    assert not part.exists() and not Path(f"{part}.lock").exists()
    assert [r for r in state.requests if r[0] == "/data.bin"] == [("/data.bin", None)]
