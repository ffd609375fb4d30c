"""Download stage against a real HTTP server on 127.0.0.1 that the tests control."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llm4rec.download import (
    DEFAULT_URL_TEMPLATES,
    DownloadError,
    fetch,
    fetch_source,
    source_urls,
)

PAYLOAD = random.Random(0).randbytes(3 * 1024 * 1024 + 517)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _State:
    """What the server does next; the tests change it between calls."""

    def __init__(self) -> None:
        self.files = {"/data.bin": PAYLOAD}
        self.fail_5xx = 0
        self.cut_after: int | None = None
        self.cut_times = 0
        self.honor_range = True
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        state: _State = self.server.state
        with state.lock:
            state.requests.append((self.path, self.headers.get("Range")))
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
        start = 0
        rng = self.headers.get("Range")
        if rng and state.honor_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if cut is not None:
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(chunk)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Talk to 127.0.0.1 and the resolver directly, whatever proxy the machine sets."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
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


def test_cut_transfer_resumes_with_range_and_completes(server, tmp_path):
    base, state = server
    state.cut_after, state.cut_times = 1_000_003, 1
    dest = tmp_path / "raw" / "reviews.json.gz"
    record = _fetch(f"{base}/data.bin", dest, sha256=SHA, size=len(PAYLOAD))
    assert record == {"url": f"{base}/data.bin", "sha256": SHA, "size": len(PAYLOAD)}
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("reviews.json.gz.part").exists()
    assert len(state.requests) == 2
    assert state.requests[0][1] is None
    resumed_at = int(state.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert resumed_at == 1_000_003  # every byte received before the cut was kept


def test_interrupted_run_keeps_part_and_next_run_resumes(server, tmp_path):
    base, state = server
    state.cut_after, state.cut_times = 700_001, 1
    dest = tmp_path / "meta.json.gz"
    with pytest.raises(DownloadError, match="giving up after 1 attempts"):
        _fetch(f"{base}/data.bin", dest, sha256=SHA, retries=0)
    part = tmp_path / "meta.json.gz.part"
    assert not dest.exists()
    assert part.stat().st_size == 700_001
    kept = part.stat().st_size
    record = _fetch(f"{base}/data.bin", dest, sha256=SHA)
    assert record["sha256"] == SHA and dest.read_bytes() == PAYLOAD
    assert state.requests[-1][1] == f"bytes={kept}-"
    assert not part.exists()


def test_complete_part_file_is_finished_after_416(server, tmp_path):
    base, state = server
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    assert _fetch(f"{base}/data.bin", dest, sha256=SHA)["size"] == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    base, state = server
    state.honor_range = False
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another file" * 100)
    record = _fetch(f"{base}/data.bin", dest)
    assert record["sha256"] == SHA and dest.read_bytes() == PAYLOAD
    assert state.requests[0][1] is not None


def test_5xx_answers_are_retried_with_backoff(server, tmp_path):
    base, state = server
    state.fail_5xx = 2
    dest = tmp_path / "f.bin"
    assert _fetch(f"{base}/data.bin", dest, sha256=SHA)["sha256"] == SHA
    assert len(state.requests) == 3


def test_persistent_5xx_gives_up(server, tmp_path):
    base, state = server
    state.fail_5xx = 10
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="giving up after 3 attempts .HTTP 503"):
        _fetch(f"{base}/data.bin", dest, retries=2)
    assert len(state.requests) == 3 and not dest.exists()


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
        {"reviews": f"{base}/data.bin", "meta": f"{base}/data.bin"}, tmp_path / "raw",
        expected={"meta": {"sha256": SHA}}, backoff=0.01, progress=False,
    )
    assert records["reviews"] == {"url": f"{base}/data.bin", "sha256": SHA, "size": len(PAYLOAD)}
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["meta.json.gz",
                                                                    "reviews.json.gz"]


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "url",
    [f"http://127.0.0.1:{_refused_port()}/reviews.json.gz",
     "http://llm4rec-no-such-host.invalid/reviews.json.gz"],
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
    assert f"download it by hand and place it at {dest.resolve()}" in message
    assert not dest.exists()


def test_404_fails_at_once_saying_where_to_put_the_file(server, tmp_path):
    base, state = server
    dest = tmp_path / "meta.json.gz"
    with pytest.raises(DownloadError, match="HTTP 404.*place it at " + str(dest.resolve())):
        _fetch(f"{base}/missing.json.gz", dest, backoff=30)
    assert len(state.requests) == 1


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
