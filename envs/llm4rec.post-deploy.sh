#!/usr/bin/env bash
# Snakemake runs this once inside the new environment of llm4rec.yaml, from its working
# directory (the checkout's root): it installs the library there, editable, so that jobs
# import this checkout's src/ (its dependencies come from llm4rec.yaml).
set -euo pipefail
if [ ! -f pyproject.toml ] || [ ! -d src/llm4rec ]; then
    echo "llm4rec.post-deploy.sh: run Snakemake from the checkout's root (no pyproject.toml or src/llm4rec in $PWD)" >&2
    exit 1
fi
python -m pip install --no-deps -e .
