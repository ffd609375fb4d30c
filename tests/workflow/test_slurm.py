"""The SLURM profile (`slurm/config.yaml`) and the GPU/process count of training jobs.

The slow test runs the data stages and one variant on a real one-node SLURM cluster started
on localhost (tests/workflow/slurm_cluster.py; root, Debian's slurm-wlm and munge from
.ci/setup-slurm.sh) and checks that every non-local rule ran as a SLURM job and that the
metrics equal a local run's with the same thread count.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, copy_checkout, planned_jobs, snakemake
from slurm_cluster import local_cluster, unavailable

GPU_RULES = {"pretrain", "finetune", "evaluate"}
CI = ["--configfile", "configs/ci.yaml"]
METRICS = "results/demo/full-s0/metrics.json"
TARGETS = ["results/demo/processed/stats.json", "results/demo/graph/stats.json", METRICS]
# What Debian's SLURM 22.05 on the test node needs: no accounts, no sacct (no accounting
# storage), a quick first status check, and no GPUs asked for (the node has none).
SLURM_TEST_FLAGS = [
    "--slurm-no-account",
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
]
NO_GPU = ["--set-resources", *(f"{rule}:gpu=0" for rule in sorted(GPU_RULES))]


def job_blocks(text: str) -> dict[str, dict[str, str]]:
    """Rule -> {'resources': {...}, 'threads': ..., 'shell': ...} from a (dry) run's job
    descriptions (`threads` only where more than one)."""
    jobs, rule = {}, None
    for line in text.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
            jobs.setdefault(rule, {"resources": {}, "shell": ""})
        elif rule and (m := re.match(r"^\s+threads: (\d+)$", line)):
            jobs[rule]["threads"] = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            jobs[rule]["resources"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
        elif rule and line.startswith("Shell command: "):
            jobs[rule]["shell"] = line.removeprefix("Shell command: ")
    return jobs


def mem_mb(slurm_value: str) -> int:
    """scontrol's memory (e.g. 16000M, 16G) in MB."""
    units = {"M": 1, "G": 1024, "T": 1024 * 1024}
    return round(float(slurm_value[:-1]) * units[slurm_value[-1]]) if slurm_value[-1] in units else int(slurm_value)


def gpu_rules(jobs: dict[str, dict]) -> set[str]:
    return {rule for rule, job in jobs.items() if int(job["resources"].get("gpu", 0)) > 0}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A checkout without results, for dry runs."""
    return copy_checkout(tmp_path_factory.mktemp("slurm_plan"))


def test_profile_dry_run_plans_the_whole_workflow(fresh: Path):
    """`snakemake --profile slurm -n` from the repository root plans what a local run plans,
    and exactly the training and evaluation rules ask for GPUs (data stages: CPUs, memory)."""
    local = planned_jobs(snakemake(fresh, "-n", "--cores", "all"))
    proc = snakemake(fresh, "--profile", "slurm", "-n")
    assert planned_jobs(proc) == local
    assert {
        "download",
        "convert",
        "preprocess",
        "relation_matrix",
        "second_order",
        "tokenizer",
        "encode",
        *GPU_RULES,
        "all",
    } <= set(local)
    jobs = job_blocks(proc.stdout + proc.stderr)
    assert gpu_rules(jobs) == GPU_RULES
    for rule, job in jobs.items():
        assert int(job["resources"]["mem_mb"]) > 0, rule
        assert int(job["resources"]["runtime"]) > 0, rule
    # One process per GPU: the launch line follows the job's GPU count.
    for rule in GPU_RULES:
        assert re.search(r"launch\.sh\"? 1 1 ", jobs[rule]["shell"]), jobs[rule]["shell"]


def test_profile_gpu_override_sets_processes(fresh: Path):
    """More GPUs for one rule (command line over profile): that rule launches one process
    per GPU; with the GPU requests set to 0 no rule asks for GPUs (the CI node has none)."""
    jobs = job_blocks(snakemake(fresh, "--profile", "slurm", "-n", "--set-resources", "pretrain:gpu=4").stdout)
    assert int(jobs["pretrain"]["resources"]["gpu"]) == 4
    assert re.search(r"launch\.sh\"? 4 1 ", jobs["pretrain"]["shell"])
    jobs = job_blocks(snakemake(fresh, "--profile", "slurm", "-n", *NO_GPU).stdout)
    assert gpu_rules(jobs) == set()
    assert all(re.search(r"launch\.sh\"? 0 1 ", jobs[rule]["shell"]) for rule in GPU_RULES)


@pytest.mark.parametrize(
    ("gpus", "cpu", "expected"),
    [
        (0, 1, ["--num_processes", "1"]),
        (1, 1, ["--num_processes", "1"]),
        (1, 3, ["--num_processes", "1"]),
        (0, 2, ["--num_processes", "2", "--multi_gpu"]),
        (4, 1, ["--num_processes", "4", "--multi_gpu"]),
    ],
)
def test_launch_processes_follow_gpus(tmp_path: Path, gpus: int, cpu: int, expected: list[str]):
    """launch.sh: one process per GPU; without GPUs the configured CPU process count."""
    fake = tmp_path / "accelerate"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    out = subprocess.run(
        ["bash", str(REPO / "workflow" / "scripts" / "launch.sh"), str(gpus), str(cpu), "train.py", "--x", "1"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PATH": os.pathsep.join([str(tmp_path), os.environ["PATH"]])},
    ).stdout.split()
    assert out[0] == "launch" and out[-3:] == ["train.py", "--x", "1"]
    i = out.index("--num_processes")
    assert out[i : i + 2] == expected[:2]
    assert ("--multi_gpu" in out) == ("--multi_gpu" in expected)


@pytest.mark.slow
def test_slurm_run_matches_local_run(tmp_path: Path):
    """Data stages and one variant as SLURM jobs give the local run's metrics."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    local, remote = (tmp_path / "local", tmp_path / "slurm")
    for dest in (local, remote):
        dest.mkdir()
        copy_checkout(dest)
    # Without the test's override exactly the training and evaluation rules ask for GPUs.
    assert gpu_rules(job_blocks(snakemake(remote, "--profile", "slurm", "-n", *TARGETS, *CI).stdout)) == GPU_RULES

    # The local run (same thread count: --cores 2, training threads = workflow.cores) runs
    # alongside: the SLURM run spends most of its time waiting between status checks.
    with ThreadPoolExecutor(1) as pool:
        local_run = pool.submit(snakemake, local, "--cores", "2", *TARGETS, *CI, timeout=900)
        with local_cluster(tmp_path / "cluster", cpus=2, mem_mb=32000) as env:
            proc = snakemake(
                remote,
                "--profile",
                "slurm",
                "--cores",
                "2",
                *TARGETS,
                *SLURM_TEST_FLAGS,
                *NO_GPU,
                *CI,
                env=env,
                timeout=900,
            )
            log = proc.stdout + proc.stderr
            submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log))
            # What SLURM itself recorded for each job (kept for an hour: MinJobAge).
            slurm_jobs = {}
            for jobid in submitted:
                out = subprocess.run(
                    ["scontrol", "-o", "show", "job", jobid],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, **env},
                ).stdout
                slurm_jobs[jobid] = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        local_run.result()

    ran = job_blocks(log)
    submitted_rules = set(submitted.values())
    assert re.search(r"^localrule download:$", log, re.M), "download runs on the submit host"
    assert submitted_rules == set(ran) - {"download"}, (submitted_rules, set(ran))
    for jobid, rule in submitted.items():
        job = slurm_jobs[jobid]
        assert job["JobState"] == "COMPLETED", (rule, job)
        assert "gpu" not in job.get("TRES", ""), (rule, job)
        assert mem_mb(job["MinMemoryNode"]) == int(ran[rule]["resources"]["mem_mb"]), (rule, job)
        # The threads Snakemake gives the rule are the CPUs SLURM gives the job.
        assert int(job["NumCPUs"]) == int(ran[rule].get("threads", 1)), (rule, job)
    for rule in GPU_RULES:  # training: 2 threads (--cores 2, as in the local run), one process
        assert ran[rule]["threads"] == "2" and "--threads 2 " in ran[rule]["shell"], ran[rule]
        assert re.search(r"launch\.sh\"? 0 1 ", ran[rule]["shell"]), ran[rule]["shell"]
    assert {
        "convert",
        "preprocess",
        "relation_matrix",
        "second_order",
        "tokenizer",
        "encode",
        *GPU_RULES,
    } <= submitted_rules
    assert len(submitted) == len(submitted_rules)  # one SLURM job per rule, each with its own id

    got = json.loads((remote / METRICS).read_text())
    want = json.loads((local / METRICS).read_text())
    assert got == want
