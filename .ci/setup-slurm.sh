#!/usr/bin/env bash
# System packages for tests/workflow/test_slurm.py: Debian's SLURM (slurmctld, slurmd, clients) and
# munge. Idempotent; the test itself writes its slurm.conf and munge key into a temporary
# folder and starts and stops the daemons. Skipped without root or apt-get (the test then
# skips with the reason).
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup-slurm: not root or no apt-get; the SLURM test will be skipped" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
