"""How much memory a job may use, and EASE's limit derived from it (no torch: the workflow's
start-up check imports this).

EASE needs dense item x item matrices, so its memory grows with the square of the catalog. A
fixed default limit refused it on machines that had the memory (8 GB against 8.1 GB needed on
a 24 GB machine); the default, ``max_memory_gb: auto``, is now a share of what this job can
really use: the machine's available memory, its cgroup's limit (a container) and the memory
of the SLURM job it runs in, whichever is smallest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

AUTO = "auto"

# The share of the job's memory EASE's matrices may take: the rest holds the interaction
# matrices, the evaluator and Python.
AUTO_SHARE = 0.9

# What the `baseline` rule asks for when the catalog size is not known yet (a fresh dataset).
UNKNOWN_NEED_MB = 10_000


def ease_memory_bytes(n_items: int) -> int:
    """Peak estimate for EASE: Gram matrix and its inverse in float64, two float32 B
    (the grid keeps the best model while fitting the next)."""
    return int(n_items) ** 2 * (8 + 8 + 4 + 4)


def _meminfo_available(path: Path) -> float | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit(path: Path) -> float | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) / 1e9 if text.isdigit() else None  # "max": no limit


def _slurm_job(env: Mapping[str, str]) -> float | None:
    """The memory of the SLURM job this process runs in (``--mem`` or ``--mem-per-cpu``), in GB."""
    try:
        if env.get("SLURM_MEM_PER_NODE"):
            return int(env["SLURM_MEM_PER_NODE"]) * 1e6 / 1e9
        if env.get("SLURM_MEM_PER_CPU"):
            cpus = int(env.get("SLURM_CPUS_ON_NODE") or env.get("SLURM_CPUS_PER_TASK") or 1)
            return int(env["SLURM_MEM_PER_CPU"]) * cpus * 1e6 / 1e9
    except ValueError:
        return None
    return None


def job_memory_gb(
    meminfo: str | Path = "/proc/meminfo",
    cgroup: str | Path = "/sys/fs/cgroup/memory.max",
    env: Mapping[str, str] | None = None,
) -> tuple[float, str] | None:
    """(GB, where the figure comes from): the least of the machine's available memory, the
    cgroup's limit and the SLURM job's memory; None when none of them can be read."""
    found = {
        "available memory of this machine": _meminfo_available(Path(meminfo)),
        "memory limit of this container (cgroup)": _cgroup_limit(Path(cgroup)),
        "memory of this SLURM job": _slurm_job(os.environ if env is None else env),
    }
    known = [(gb, what) for what, gb in found.items() if gb is not None]
    if not known:
        return None
    gb, what = min(known)
    return gb, f"{what}: {gb:.1f} GB"


def ease_limit_gb(setting: float | str | None = AUTO, **where) -> tuple[float, str]:
    """EASE's limit in GB and why: a number as configured, or with ``auto`` (the default)
    ``AUTO_SHARE`` of :func:`job_memory_gb` (``where`` passes its sources on, for tests)."""
    if setting is None or setting == AUTO:
        mem = job_memory_gb(**where)
        if mem is None:
            raise ValueError(
                "baselines.ease.max_memory_gb auto: this machine's memory cannot be read (/proc/meminfo); "
                "set max_memory_gb to a number of GB"
            )
        return AUTO_SHARE * mem[0], f"max_memory_gb auto: {AUTO_SHARE:.0%} of the {mem[1]}"
    return float(setting), f"max_memory_gb {float(setting):g}"


def ease_need_gb(n_items: int) -> float:
    return ease_memory_bytes(n_items) / 1e9


def ease_mem_mb(setting: float | str | None, stats: str | Path) -> int:
    """The `mem_mb` the EASE job asks a scheduler for: the configured limit plus 2 GB, or with
    ``auto`` the need of the catalog in ``stats`` (the processed `stats.json`, when it
    exists already) plus 2 GB, else ``UNKNOWN_NEED_MB``."""
    if setting is not None and setting != AUTO:
        return int(float(setting) * 1000 + 2000)
    n_items = catalog_size(stats)
    return UNKNOWN_NEED_MB if n_items is None else int(ease_need_gb(n_items) / AUTO_SHARE * 1000 + 2000)


def catalog_size(stats: str | Path) -> int | None:
    """The item count of a processed dataset's `stats.json`, or None before it exists."""
    import json

    try:
        return int(json.loads(Path(stats).read_text())["items"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
