"""The workflow's wall clock quiet and beside a competing CPU job (issue 24, item 10).

Runs `snakemake --cores 2` (the README's `make demo`, by default with the short CI schedule)
in a fresh copy of a checkout, once quiet and once beside a busy loop on N processes, and
prints the wall clock, the pre-training and fine-tuning seconds (Snakemake `benchmarks/`) and
the load average. The environment is the caller's minus OMP_WAIT_POLICY, as a newcomer's
shell has it; `--checkout` may be an older clone (its `src/` is put first on PYTHONPATH, so
that its library, not the installed one, runs).

    .venv/bin/python bench/bench_contention.py --checkout . --busy 2
    .venv/bin/python bench/bench_contention.py --busy 2 --env GOMP_SPINCOUNT=10000 --configfile
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _busy() -> None:
    while True:
        pass


def copy_checkout(src: Path, dest: Path) -> None:
    """What a fresh clone holds: tracked and untracked, not ignored, files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for rel in filter(None, out.split("\0")):
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)


def stage_seconds(work: Path) -> dict[str, float]:
    """Seconds per training stage of every run, from Snakemake's benchmark files."""
    out = {}
    for tsv in sorted((work / "benchmarks").rglob("*.tsv")):
        if tsv.stem in ("pretrain", "finetune", "evaluate"):
            with open(tsv) as fh:
                row = next(csv.DictReader(fh, delimiter="\t"))
            out[f"{tsv.parent.name}/{tsv.stem}"] = round(float(row["s"]), 1)
    return out


def run(checkout: Path, busy: int, configfiles: list[str], target: list[str], extra_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(checkout / "src")
    env.update(extra_env)
    workers = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(busy)]
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
        work = Path(tmp)
        copy_checkout(checkout, work)
        for w in workers:
            w.start()
        try:
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            cmd = [str(BIN / "snakemake"), "--cores", "2", *target]
            if configfiles:
                cmd += ["--configfile", *configfiles]
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            load1 = os.getloadavg()
        finally:
            for w in workers:
                w.terminate()
                w.join()
        if proc.returncode:
            raise SystemExit(proc.stderr[-4000:])
        return {
            "env": extra_env,
            "busy_processes": busy,
            "wall_s": round(wall, 1),
            "stages_s": stage_seconds(work),
            "load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in load1],
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkout", type=Path, default=Path("."))
    ap.add_argument("--busy", type=int, default=0, help="competing busy-loop processes")
    ap.add_argument("--configfile", nargs="*", default=["configs/ci.yaml"])
    ap.add_argument("--env", nargs="*", default=[], help="KEY=VALUE set for the run, e.g. GOMP_SPINCOUNT=10000")
    ap.add_argument("target", nargs="*")
    args = ap.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    res = run(args.checkout.resolve(), args.busy, args.configfile, args.target, extra_env)
    print(json.dumps({"checkout": str(args.checkout), "when": time.strftime("%H:%M:%S"), **res}))


if __name__ == "__main__":
    main()
