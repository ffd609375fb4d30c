"""Send a stage's output to its log file (Snakemake `log:`), keeping errors visible."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[logging.Logger]:
    """Redirect stdout/stderr and `logging` to ``path``; re-raise errors after logging them.

    The error message is also printed to the original stderr, so a failing stage says why
    on the console and not only inside its log.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    console = sys.stderr
    with open(path, "w", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        root = logging.getLogger()
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield logging.getLogger("llm4rec")
        except BaseException as exc:
            traceback.print_exc(file=fh)
            print(f"error: {exc} (log: {path})", file=console)
            raise
        finally:
            root.removeHandler(handler)
            sys.stdout, sys.stderr = old_out, old_err


class _LogProgress:
    """tqdm's interface for logs: one line per `every` of the work or per `seconds`,
    instead of every redrawn frame (carriage returns) when the output is not a terminal."""

    def __init__(
        self,
        iterable: Iterable,
        desc: str,
        total: int | None,
        logger: logging.Logger,
        every: float = 0.1,
        seconds: float = 60.0,
    ) -> None:
        self.iterable, self.desc, self.logger = iterable, desc, logger
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.every, self.seconds = every, seconds
        self.postfix = ""

    def set_postfix(self, **kwargs: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def _line(self, done: int, t0: float) -> None:
        elapsed = time.time() - t0
        share = f"/{self.total} ({100 * done / self.total:.0f}%)" if self.total else ""
        rate = f", {done / elapsed:.1f}/s" if elapsed > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        self.logger.info("%s: %d%s, %.0f s%s%s", self.desc, done, share, elapsed, rate, extra)

    def __iter__(self) -> Iterator:
        t0 = last_t = time.time()
        step = max(1, int(self.every * self.total)) if self.total else None
        done = 0
        for x in self.iterable:
            yield x
            done += 1
            now = time.time()
            if (step and done % step == 0) or now - last_t >= self.seconds:
                self._line(done, t0)
                last_t = now
        if not step or done % step:
            self._line(done, t0)


def progress(
    iterable: Iterable, desc: str, total: int | None = None, disable: bool = False, logger: logging.Logger | None = None
):
    """A tqdm bar on a terminal; otherwise a progress line in the log every 10% or minute."""
    if disable:
        return tqdm(iterable, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, mininterval=2.0, leave=False)
    return _LogProgress(iterable, desc, total, logger or logging.getLogger("llm4rec.progress"))


def readable(values: Mapping[str, Any]) -> str:
    """``loss 0.1235, Recall@20 0.3457, 12.3 s``: one log line of a summary dict, floats to 4
    significant digits and seconds to a tenth (a raw dict prints 16 digits and quotes)."""
    parts = []
    for key, value in values.items():
        if key == "seconds" and isinstance(value, (int, float)):
            parts.append(f"{value:.1f} s")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)
