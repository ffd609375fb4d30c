"""A throw-away single-node SLURM cluster on localhost, for tests (root only).

`local_cluster(tmp)` writes a minimal `slurm.conf` and a munge key into ``tmp``, starts
`munged`, `slurmctld` and `slurmd` in the foreground as child processes (own socket, ports,
state and spool directories: nothing under /etc or /run is touched), waits until the node
takes jobs and yields the environment (``SLURM_CONF``) that clients need. On exit, also after
a failure, it stops exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")


def unavailable() -> str | None:
    """Why a local cluster cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user); CI runs as root"
    missing = [d for d in PROGRAMS if not _which(d)]
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)} missing): run .ci/setup-slurm.sh"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node() -> tuple[str, int, int]:
    """This host's short name, CPUs and memory (MB) as slurmd sees them."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"])


def write_config(root: Path, cpus: int | None = None, mem_mb: int | None = None) -> Path:
    """slurm.conf for one node on localhost, all paths under ``root``.

    The node advertises at least ``cpus`` CPUs and ``mem_mb`` MB (`config_overrides`: slurmd
    trusts the file, so jobs asking for the workflow's default memory still fit); memory is
    not a consumable resource (CR_Core), so jobs are limited by CPUs only.
    """
    name, real_cpus, real_mem = _node()
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    node_cpus, node_mem = max(real_cpus, cpus or 1), max(real_mem, mem_mb or 1)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=llm4rec-ci
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "run" / "munge.socket"}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1
MinJobAge=3600
MessageTimeout=30
NodeName={name} NodeAddr=127.0.0.1 CPUs={node_cpus} RealMemory={node_mem} State=UNKNOWN
PartitionName=ci Nodes={name} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise RuntimeError(f"local SLURM: {what} not ready after {timeout:.0f} s\n{tails}")


@contextlib.contextmanager
def local_cluster(root: Path, cpus: int | None = None, mem_mb: int | None = None, timeout: float = 60):
    """Start munged, slurmctld and slurmd for a one-node cluster; yield the client env."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # munged checks the key's and socket's directories
    conf = write_config(root, cpus, mem_mb)
    key = root / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    # The SLURM job step plugin drops every SLURM_* variable, SLURM_CONF included, from the
    # environment of the `srun` it runs inside the job; on a real cluster the configuration
    # sits at the default path (or comes from slurmctld), here an `srun` first on PATH
    # restores it instead of writing to /etc/slurm.
    shim = root / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "srun").write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {_which("srun")} "$@"\n')
    (shim / "srun").chmod(0o755)
    client = {"SLURM_CONF": str(conf), "PATH": os.pathsep.join([str(shim), os.environ.get("PATH", "")])}
    env = {**os.environ, **client}
    log = root / "log"
    procs: list[subprocess.Popen] = []

    def start(*cmd: str, out: str) -> None:
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=(log / out).open("w"), stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def sinfo_idle() -> bool:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
        return proc.returncode == 0 and proc.stdout.strip() in ("idle", "mix")

    try:
        start(
            _which("munged"),
            "-F",
            "--force",
            f"--socket={root / 'run' / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={root / 'run' / 'munged.pid'}",
            f"--log-file={log / 'munged.log'}",
            f"--seed-file={root / 'run' / 'munged.seed'}",
            out="munged.out",
        )
        _wait(
            lambda: (root / "run" / "munge.socket").exists(),
            timeout,
            "munged",
            [log / "munged.out", log / "munged.log"],
        )
        start(_which("slurmctld"), "-D", "-i", "-f", str(conf), out="slurmctld.out")
        start(_which("slurmd"), "-D", "-f", str(conf), out="slurmd.out")
        _wait(
            sinfo_idle,
            timeout,
            "node",
            [log / f for f in ("slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log")],
        )
        yield client
    finally:
        if len(procs) == 3:  # jobs still running (a failed test) end with the cluster
            subprocess.run(["scancel", "--full", "--partition=ci"], env=env, capture_output=True, timeout=30)
            time.sleep(1)
        for proc in reversed(procs):  # slurmd, slurmctld, munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
