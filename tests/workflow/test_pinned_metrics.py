"""Behaviour pinned across refactors and machines (tests/fixtures/pinned_demo_metrics.json).

What is exact on every x86-64 machine seen (AVX2 and AVX-512 AMD EPYC VMs) is pinned to the
last digit: the demo's baselines (popularity, ItemKNN, EASE, Multi-VAE) and the model trained
on the short `configs/ci.yaml` schedule. The default config's trained model is not: its long
schedule amplifies the floating-point differences between CPUs (kernel choice by vector width,
cache sizes, library versions) into test Recall@20 0.406, 0.409 and 0.435 on three machines. For
it the suite checks what is promised instead:

- repeatability: the same config trained twice on the same machine gives identical metrics and
  identical training histories;
- a band that every machine seen so far satisfies, derived from the spread over seeds on one
  machine (a different floating-point path perturbs training like another seed does), narrow
  enough that a run which learns less (the short CI schedule, a learning rate of 0) falls out.

The runs are those of the `demo_run` (`snakemake --cores all`) and `ci_base` fixtures. A change
that moves a number on purpose re-records the file and says why in its commit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import CI_RUN, snakemake

PINNED = json.loads((Path(__file__).parents[1] / "fixtures" / "pinned_demo_metrics.json").read_text())
DEMO_RUN = "results/demo/full-s0"
BAND = PINNED["default_band"][DEMO_RUN]


def cpu_model() -> str:
    """The CPU's model name and vendor, for failure messages (the checks do not depend on it)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    fields = dict((k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[:30] if ":" in line))
    return " ".join(fields.get(k, "?") for k in ("vendor_id", "model name"))


def outside_band(test: dict, band: dict) -> dict[str, float]:
    """The metrics of `test` that fall outside `band` ({metric: [low, high]}); a metric that
    `test` lacks is not judged (one machine's record holds Recall@20 only)."""
    return {m: test[m] for m, (low, high) in band["band"].items() if m in test and not low <= test[m] <= high}


def _assert_same(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for k, v in want.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=0, abs=1e-6), f"{where}: {k}"
        else:
            assert got[k] == v, f"{where}: {k}"


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(PINNED["default"]))
def test_default_demo_baselines_are_pinned(demo_run, run):
    got = json.loads((demo_run / run / "metrics.json").read_text())
    want = PINNED["default"][run]
    _assert_same(got["test"], want["test"], run)
    assert got.get("epoch") == want.get("epoch"), run


@pytest.mark.slow
def test_ci_demo_metrics_are_pinned(ci_base):
    got = json.loads((ci_base / CI_RUN / "metrics.json").read_text())
    want = PINNED["ci"][CI_RUN]
    _assert_same(got["test"], want["test"], CI_RUN)
    assert got["epoch"] == want["epoch"]


def test_band_holds_every_machine_seen_and_excludes_weak_learners():
    """The band's own record: each machine's values inside, each weakened run outside."""
    for machine, test in BAND["seen"].items():
        assert not outside_band(test, BAND), machine
    for weakened, test in BAND["weakened"].items():
        assert outside_band(test, BAND), weakened


@pytest.mark.slow
def test_default_demo_model_is_in_band(demo_run):
    got = json.loads((demo_run / DEMO_RUN / "metrics.json").read_text())["test"]
    assert got["users"] == BAND["users"] and BAND["band"].keys() <= got.keys()
    assert not outside_band(got, BAND), f"{DEMO_RUN} on {cpu_model()}: {got} outside {BAND['band']}"


@pytest.mark.slow
def test_ci_schedule_falls_outside_the_band(ci_base):
    """A real run that learns less (one fine-tuning epoch of a smaller model) fails the band."""
    got = json.loads((ci_base / CI_RUN / "metrics.json").read_text())["test"]
    assert outside_band(got, BAND)


def _history(run: Path, stage: str) -> pd.DataFrame:
    history = pd.read_csv(run / stage / "history.csv")
    return history.drop(columns=[c for c in history.columns if "second" in c or "time" in c])


@pytest.mark.slow
def test_default_demo_model_is_repeatable(demo_run, tmp_path):
    """Training the default config again on this machine gives the same model to the bit."""
    work = tmp_path / "again"
    shutil.copytree(demo_run, work, symlinks=True)
    snakemake(work, f"{DEMO_RUN}/metrics.json", "--cores", "all", "--forcerun", "pretrain", timeout=3600)
    first, again = demo_run / DEMO_RUN, work / DEMO_RUN
    assert (again / "metrics.json").stat().st_mtime > (first / "metrics.json").stat().st_mtime
    assert json.loads((again / "metrics.json").read_text()) == json.loads((first / "metrics.json").read_text())
    for stage in ("pretrain", "finetune"):
        pd.testing.assert_frame_equal(_history(again, stage), _history(first, stage), check_exact=True)
