"""The Snakemake report after the demo run: built, self-contained, renders without console errors.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages separated by NUL bytes on file descriptors 3 and 4), with the standard library only.
`--enable-logging=stderr` cannot tell console levels apart (every message is logged at INFO),
so the test listens to `Runtime.consoleAPICalled`, `Runtime.exceptionThrown` and
`Log.entryAdded` instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import snakemake

from llm4rec.model.encoding import KIND, Examples
from llm4rec.report.bias import NoSecondOrderPrompt, plot_no_relation_bias, second_order_bias

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)


class DevTools:
    """A headless Chromium and one page, spoken to over `--remote-debugging-pipe`."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # Chromium reads commands on fd 3 and writes replies and events on fd 4. The pipe ends
        # move above 9 first, so that the two dup2 calls cannot overwrite each other; every other
        # descriptor of ours is close-on-exec (Python's default) and stays behind.
        hi_r, hi_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_r, from_w))
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.pid = os.posix_spawn(
            binary,
            [binary, *args],
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, hi_r, 3),
                (os.POSIX_SPAWN_DUP2, hi_w, 4),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2),
            ],
        )
        for fd in (to_r, from_w, hi_r, hi_w, devnull):
            os.close(fd)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_r], [], [], left)[0]:
                return None
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 30) -> dict:
        """Send one command and wait for its reply, keeping the events that arrive meanwhile."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline - time.monotonic())
            if reply is None:
                break
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} in {timeout} s")

    def pump(self, seconds: float) -> None:
        """Collect events for a while (the page's scripts run meanwhile)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is not None:
                self.events.append(msg)

    def open(self, url: str, width: int = 1400, height: int = 900) -> None:
        """Open ``url`` in a window of ``width`` x ``height`` CSS pixels."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def errors(self) -> list[str]:
        """Console messages of level error, uncaught exceptions and browser log errors."""
        out = []
        for ev in self.events:
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log ({p['entry'].get('source')}): {p['entry']['text']}")
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        os.close(self._to_w)
        os.close(self._from_r)


VISIT_RESULT = """(p => {
    const mime = results[p].mime_type;
    const content = mime.startsWith("image/") ? "img" : (mime === "text/html" ? "html" : null);
    app.showResultInfo(p);
    if (content) app.setView({content: content, contentPath: results[p].data_uri, resultPath: p});
    return content;
})(%s)"""

SHOWN = """(() => {
    const img = document.querySelector('#app img[src^="data:"]');
    const frame = document.querySelector('#app iframe');
    return img ? img.complete && img.naturalWidth > 0 : !!frame;
})()"""


# Where the front page's method table and workflow graph lie ([left, top, right, bottom] in
# CSS pixels), once the graph is drawn; null before.
FRONT_LAYOUT = """(() => {
    const box = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
    const table = document.querySelector('#app .prose table');
    const graph = document.querySelector('#rulegraph');
    if (!table || !graph || !graph.querySelector('canvas, svg')) return null;
    return {
        table: box(table),
        last_column: [...table.querySelectorAll('tr')].map(tr => box(tr.lastElementChild)),
        graph: box(graph),
    };
})()"""

# The result image shown (the largest one: the menu has small icons): its right edge, the
# window's width, its width on the page and its own width (an SVG's, in CSS pixels).
IMAGE_FIT = """(() => {
    const imgs = [...document.querySelectorAll('#app img[src^="data:"]')];
    if (!imgs.length) return null;
    const img = imgs.reduce((a, b) => (a.naturalWidth >= b.naturalWidth ? a : b));
    const box = img.getBoundingClientRect();
    return {right: box.right, window: window.innerWidth, shown: box.width, own: img.naturalWidth};
})()"""


def render(report: Path, profile: Path, wait_s: float = 30, visit: bool = False) -> tuple[str, list[str], dict, dict]:
    """The text of the rendered report (the React app's DOM) in a 1400 x 900 window, its
    console errors, with ``visit`` for each result shown as image or page whether it displayed
    (its caption too), and the layout: the front page's table and graph (`FRONT_LAYOUT`) and,
    per image shown, where it lies and how wide it is (`IMAGE_FIT`)."""
    chrome = DevTools(CHROMIUM, profile)
    shown: dict[str, bool] = {}
    layout: dict = {"images": {}}
    try:
        chrome.open(report.resolve().as_uri())
        deadline = time.monotonic() + wait_s
        text = ""
        while time.monotonic() < deadline:
            chrome.pump(0.5)
            text = chrome.evaluate("document.querySelector('#app') ? document.querySelector('#app').innerText : ''")
            if text and chrome.evaluate("document.querySelectorAll('#app table').length") > 0:
                layout["front"] = chrome.evaluate(FRONT_LAYOUT)
                if layout["front"] is not None:
                    break
        if visit:
            for path in chrome.evaluate("Object.keys(results)"):
                content = chrome.evaluate(VISIT_RESULT % json.dumps(path))
                if content is not None:
                    chrome.pump(0.5)
                    shown[path] = bool(chrome.evaluate(SHOWN))
                if content == "img":
                    layout["images"][path] = chrome.evaluate(IMAGE_FIT)
        chrome.pump(1.0)  # late errors
        return text, chrome.errors(), shown, layout
    finally:
        chrome.close()


def test_devtools_sees_console_errors(tmp_path):
    """The harness itself: an error-level console message and an exception are caught, a log is not."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it with .ci/setup-chromium.sh)")
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body><p id='app'><table><tr><td>42.5</td></tr></table></p><script>"
        "console.log('fine'); console.warn('careful'); console.error('broken');"
        "setTimeout(() => { null.x; }, 10);</script></body></html>"
    )
    text, errors, _, _ = render(page, tmp_path / "profile", wait_s=3)
    assert any("broken" in e for e in errors), errors
    assert any("exception" in e for e in errors), errors
    assert not any("fine" in e or "careful" in e for e in errors), errors


@pytest.mark.slow
def test_report_renders_summary_without_errors(demo_run, tmp_path):
    """`snakemake --report` after the demo: one self-contained file whose rendered page shows the
    summary table's numbers and logs no console error."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it with .ci/setup-chromium.sh)")
    report = demo_run / "report.html"
    snakemake(demo_run, "--report", str(report), timeout=600)
    html = report.read_text()
    # self-contained: no resource is fetched from elsewhere (links in text may mention URLs)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"https?://", html)
    text, errors, shown, layout = render(report, tmp_path / "profile", visit=True)
    assert errors == [], errors
    # every figure and page of the report displays (the heatmap, curves, bar chart, tables)
    assert any(p.endswith("relation_bias.svg") for p in shown) and any(p.endswith("summary.html") for p in shown)
    assert all(shown.values()), shown
    # at 1400 px the method table ends left of the workflow graph, and every figure fits
    front = layout["front"]
    assert front is not None, "the front page's table or workflow graph did not render"
    graph_left = front["graph"][0]
    assert front["table"][2] <= graph_left, front
    assert all(cell[2] <= graph_left for cell in front["last_column"]), front
    # (shown at its own size: a wider figure is shrunk to the page, its labels with it)
    curves = {p: v for p, v in layout["images"].items() if "/curves/" in p}
    assert curves, layout["images"]
    for path, fit in curves.items():
        assert fit is not None and fit["right"] <= fit["window"] and fit["shown"] >= fit["own"] - 1, (path, fit)
    stats = json.loads((demo_run / "results/demo/processed/stats.json").read_text())
    dataset_page = (demo_run / "results/demo/report/dataset.html").read_text()
    assert f"<td>{stats['sparsity']:.4%}</td>" in dataset_page and repr(stats["sparsity"]) not in dataset_page

    methods = pd.read_csv(demo_run / "results" / "demo" / "summary_methods.csv")
    assert {"full", "popularity", "itemknn", "ease", "multivae"} <= set(methods["method"])
    for _, row in methods.iterrows():
        assert row["method"] in text
        for metric in ("Recall@20", "Recall@40", "NDCG@100"):
            assert f"{row[f'{metric}_mean']:.4f}" in text, (row["method"], metric)
    for p in methods["wilcoxon_p"].dropna():
        assert f"{p:.3g}" in text


@pytest.mark.slow
def test_demo_baselines_and_summary(demo_run):
    """The demo run's baselines: Multi-VAE's loss falls and it beats popularity; the summary has
    one row per method and seed with a time."""
    d = demo_run / "results" / "demo"
    metrics = {
        n: json.loads((d / "baselines" / n / "metrics.json").read_text())
        for n in ("popularity", "itemknn", "ease", "multivae-s0")
    }
    for m in metrics.values():
        assert set(m["test"]) == {"Recall@20", "Recall@40", "NDCG@100", "users"}
    vae, pop = metrics["multivae-s0"]["test"], metrics["popularity"]["test"]
    assert vae["Recall@20"] > pop["Recall@20"] and vae["NDCG@100"] > pop["NDCG@100"]
    hist = pd.read_csv(d / "baselines" / "multivae-s0" / "history.csv")
    assert hist["loss"].tail(5).mean() < 0.95 * hist["loss"].iloc[0]
    assert metrics["multivae-s0"]["epoch"] == int(hist["selection"].idxmax())
    summary = pd.read_csv(d / "summary.csv")
    assert list(summary["method"]) == ["full", "popularity", "itemknn", "ease", "multivae"]
    assert (summary["seconds"] > 0).all()
    assert summary.loc[summary["method"] == "full", "Recall@20"].item() == pytest.approx(
        json.loads((d / "full-s0" / "metrics.json").read_text())["test"]["Recall@20"]
    )


def test_no_second_order_prompt_makes_a_figure_that_says_so(tmp_path):
    """Items sharing no brand or category: no heatmap to draw, a figure with the reason instead."""
    texts = Examples(
        ids=np.array([5, 6, 7]),
        offsets=np.array([0, 3]),
        prompt_len=np.array([3], dtype=np.int32),
        kind=np.array([KIND["review"]], dtype=np.int8),
        uid=np.array([-1]),
        items=np.empty(0, dtype=np.int64),
        item_offsets=np.zeros(2, dtype=np.int64),
    )
    with pytest.raises(NoSecondOrderPrompt, match="no second-order prompt"):
        second_order_bias(texts, None, 50, 12, 9, 12)
    plot_no_relation_bias(tmp_path / "bias.svg", "no brand or category is shared by two items of mine")
    svg = (tmp_path / "bias.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "No second-order prompt" in svg and "shared by two items of mine" in svg
