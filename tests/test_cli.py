"""`llm4rec recommend` and friends as a user runs them: a real process on real run folders."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BIN

from llm4rec import __version__
from llm4rec.data.preprocess import write_recommendations

N_USERS, N_ITEMS, TOP = 20, 30, 10


def _processed(folder: Path, users: list[str]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame({"uid": np.arange(len(users)), "user_id": users}).to_parquet(folder / "users.parquet")
    items = pd.DataFrame({"iid": np.arange(N_ITEMS), "item_id": [f"B{k:03d}" for k in range(N_ITEMS)]})
    items.assign(title=[f"title {k}" for k in range(N_ITEMS)]).to_parquet(folder / "items.parquet")
    return folder


def _run(folder: Path, processed: Path) -> Path:
    """A run's recommendations: user u's list is items u, u+1, ... (so lists tell users apart)."""
    folder.mkdir(parents=True)
    rows = [(u, r + 1, (u + r) % N_ITEMS, 1.0 - r / 100) for u in range(N_USERS) for r in range(TOP)]
    recs = pd.DataFrame(rows, columns=["uid", "rank", "iid", "score"])
    write_recommendations(recs, folder / "recommendations.parquet", processed)
    return folder


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """results/shop with a variant run and a baseline run; user ids are numbers, not uids."""
    shop = tmp_path / "results" / "shop"
    processed = _processed(shop / "processed", [str(N_USERS - 1 - u) for u in range(N_USERS)])
    _run(shop / "full-s0", processed)
    _run(shop / "baselines" / "popularity", processed)
    return shop


def llm4rec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "llm4rec"), *args], capture_output=True, text=True, timeout=120)


def _first_item(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[2].split()[1]


def test_a_numeric_original_id_wins_over_a_uid(results):
    """User id "12" is uid 7; uid 12 is user "7": --user means the id, --uid the number."""
    proc = llm4rec("recommend", "--run", str(results / "full-s0"), "--user", "12")
    assert proc.stdout.startswith("top 10 items for user_7 (12):")
    assert _first_item(proc) == "item_7"
    proc = llm4rec("recommend", "--run", str(results / "full-s0"), "--uid", "12")
    assert proc.stdout.startswith("top 10 items for user_12 (7):") and _first_item(proc) == "item_12"


def test_a_number_that_is_only_a_uid_is_not_guessed(results):
    proc = llm4rec("recommend", "--run", str(results / "full-s0"), "--user", "25")
    assert proc.returncode == 2 and "user '25' is not an original user id" in proc.stderr
    results_users = pd.read_parquet(results / "processed" / "users.parquet")
    results_users.assign(user_id=[f"U{k}" for k in range(N_USERS)]).to_parquet(results / "processed" / "users.parquet")
    _run(results / "again-s0", results / "processed")
    proc = llm4rec("recommend", "--run", str(results / "again-s0"), "--user", "3")
    assert proc.returncode == 2 and "To ask for uid 3, use --uid 3." in proc.stderr and not proc.stdout


@pytest.mark.parametrize(("flag", "value"), [("--user", "²"), ("--uid", "²"), ("--uid", "-1"), ("--uid", "99")])
def test_odd_user_values_are_told_without_a_traceback(results, flag, value):
    proc = llm4rec("recommend", "--run", str(results / "full-s0"), flag, value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not proc.stdout
    assert "error: " in proc.stderr


@pytest.mark.parametrize("top", ["-5", "0"])
def test_top_must_be_positive(results, top):
    proc = llm4rec("recommend", "--run", str(results / "full-s0"), "--user", "12", "--top", top)
    assert proc.returncode == 2 and f"{top} is not a positive number of items" in proc.stderr and not proc.stdout


def test_output_has_column_headers_and_top_items(results):
    proc = llm4rec("recommend", "--run", str(results / "full-s0"), "--user", "12", "--top", "3")
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["rank", "iid", "item_id", "score", "title"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "3"]
    assert lines[2].split()[2:] == ["B007", "1.0000", "title", "7"]


def test_a_baseline_run_folder_finds_its_data(results):
    proc = llm4rec("recommend", "--run", str(results / "baselines" / "popularity"), "--user", "12")
    assert proc.stdout.startswith("top 10 items for user_7 (12):") and _first_item(proc) == "item_7"


def test_a_mistyped_run_folder_is_told_it_does_not_exist(results):
    proc = llm4rec("recommend", "--run", str(results / "ful-s0"), "--user", "12")
    assert proc.returncode == 2 and f"--run {results / 'ful-s0'}: no such folder" in proc.stderr
    assert "full-s0" in proc.stderr and "evaluate stage" not in proc.stderr


def test_a_run_of_another_dataset_is_refused(results, tmp_path):
    other = _processed(tmp_path / "results" / "other" / "processed", [f"x{u}" for u in range(N_USERS)])
    _run(tmp_path / "results" / "other" / "full-s0", other)
    shutil.copytree(tmp_path / "results" / "other" / "full-s0", results / "copied-s0")
    proc = llm4rec("recommend", "--run", str(results / "copied-s0"), "--uid", "1")
    assert proc.returncode == 2 and "ranks other data than" in proc.stderr and not proc.stdout


def test_version_and_help_texts():
    proc = llm4rec("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"llm4rec {__version__}"
    text = llm4rec("recommend", "--help").stdout
    assert "how many items to print" in text and "--uid" in text
    assert "folder to write reviews.json.gz" in llm4rec("demo-data", "--help").stdout
