"""Shared fixtures: a copy of the checkout to run Snakemake in, built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "amazon2018"
BIN = Path(sys.executable).parent


def copy_checkout(dest: Path) -> Path:
    """Copy what a fresh clone would hold (tracked and untracked, not ignored files)."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def snakemake(
    cwd: Path, *args: str, check: bool = True, timeout: float = 1800, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the venv's snakemake in ``cwd``; on failure show its output."""
    cmd = [str(BIN / "snakemake"), *args]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    lines = text.split("Job stats:", 1)[1].splitlines()
    jobs = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    """A small BPE tokenizer trained on the prompts' template words (model and backbone tests)."""
    from llm4rec.model.tokenization import load_tokenizer, train_bpe_tokenizer

    d = tmp_path_factory.mktemp("tok")
    corpus = ["These items have the same brand: Acme. They are all in the category: Home"] * 10
    corpus += ["user wrote the following review for it: great product; has interacted with, will interact with"] * 10
    train_bpe_tokenizer(iter(corpus), d, vocab_size=300, min_frequency=1)
    return load_tokenizer(d)


@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    """A fresh copy of the checkout, shared by the workflow tests that only read it."""
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="session")
def demo_data(checkout: Path) -> Path:
    """The demo through the data and graph stages (run once per session)."""
    snakemake(
        checkout,
        "--cores",
        "2",
        "results/demo/processed/stats.json",
        "results/demo/graph/stats.json",
        "results/demo/graph/second_order.parquet",
    )
    return checkout / "results" / "demo"


@pytest.fixture(scope="session")
def demo_run(demo_data: Path, checkout: Path) -> Path:
    """The README's main command (`snakemake --cores all`) on the demo, run once per session.

    About 10 minutes on 2 quiet cores; the hour allows for a machine shared with other work.
    """
    snakemake(checkout, "--cores", "all", timeout=3600)
    return checkout


CI_CONFIG = ("--configfile", "configs/ci.yaml")
CI_RUN = "results/demo/full-s0"


@pytest.fixture(scope="session")
def ci_base(tmp_path_factory) -> Path:
    """A checkout with the short CI schedule run end to end once (1 core, 1 process)."""
    work = copy_checkout(tmp_path_factory.mktemp("ci_base"))
    snakemake(work, f"{CI_RUN}/metrics.json", "--cores", "1", *CI_CONFIG)
    return work


@pytest.fixture
def ci_copy(ci_base: Path, tmp_path: Path) -> Path:
    """A private copy of `ci_base` (outputs, Snakemake metadata and timestamps included)."""
    dest = tmp_path / "work"
    shutil.copytree(ci_base, dest, symlinks=True)
    return dest


def evaluate_scores(score_fn, train, target, *, top_n: int = 0, **settings):
    """`RankingEvaluator` in one call (train items excluded, users without targets skipped)."""
    from llm4rec.metrics import RankingEvaluator

    return RankingEvaluator(train, target, **settings).evaluate(score_fn, top_n=top_n)
