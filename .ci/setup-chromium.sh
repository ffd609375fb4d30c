#!/bin/sh
# Headless Chromium for tests/report/test_report.py (renders the Snakemake report, checks the console).
set -eu
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium
