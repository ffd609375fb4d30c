"""Behaviour pinned across refactors: the demo's test metrics equal values recorded before
(tests/data/pinned_demo_metrics.json), for the default config and for configs/ci.yaml.

The values were recorded on a clean clone of the commit that made the `tiny` tokenizer learn
the prompt templates' words (the numbers moved then) with `snakemake --cores 2` (default
config) and
`snakemake results/demo/full-s0/metrics.json --cores 1 --configfile configs/ci.yaml` (the
runs of the `demo_run` and `ci_base` fixtures, reused here: no extra workflow run). A change
that moves a number on purpose re-records the file and says why in its commit. The default
config's trained model is pinned per CPU kind (vector width and vendor): its long schedule
amplifies the floating-point differences between kinds; the baselines and the short CI
schedule give the same numbers on both kinds seen.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch
from conftest import CI_RUN

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_demo_metrics.json").read_text())


def cpu_kind() -> str:
    """torch's CPU capability and the CPU vendor (the math libraries choose kernels by both)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    vendor = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), platform.machine())
    return f"{torch.backends.cpu.get_cpu_capability()} {vendor}"


def pinned_for_this_cpu(want: dict, where: str) -> dict:
    """A pin recorded per CPU kind (`by_cpu`, keyed by `cpu_kind()`) is the one of this
    machine's kind: another vector width orders floating-point sums differently, and over a
    long training that moves the demo's metrics. A kind without a recorded pin is skipped."""
    if "by_cpu" not in want:
        return want
    cpu = cpu_kind()
    if cpu not in want["by_cpu"]:
        pytest.skip(f"{where}: no pin recorded for CPU kind {cpu!r} (have {sorted(want['by_cpu'])})")
    return want["by_cpu"][cpu]


def _assert_same(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for k, v in want.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=0, abs=1e-6), f"{where}: {k}"
        else:
            assert got[k] == v, f"{where}: {k}"


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(PINNED["default"]))
def test_default_demo_metrics_are_pinned(demo_run, run):
    got = json.loads((demo_run / run / "metrics.json").read_text())
    want = pinned_for_this_cpu(PINNED["default"][run], run)
    _assert_same(got["test"], want["test"], run)
    assert got.get("epoch") == want.get("epoch"), run


@pytest.mark.slow
def test_ci_demo_metrics_are_pinned(ci_base):
    run = CI_RUN
    got = json.loads((ci_base / run / "metrics.json").read_text())
    want = PINNED["ci"][run]
    _assert_same(got["test"], want["test"], run)
    assert got["epoch"] == want["epoch"]
