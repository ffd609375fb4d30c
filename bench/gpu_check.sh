#!/usr/bin/env bash
# SmolLM2-135M-Instruct on Amazon Beauty with titles (configs/smollm2.yaml, LoRA) through the
# main command with a short schedule, twice: float32 (launch.mixed_precision "no") and bf16
# autocast. Prints per run: tokens/s of each training phase, peak GPU memory (nvidia-smi,
# sampled every 0.5 s) or the jobs' peak RSS, the wall time of each stage, and the test metrics.
# One command; under 8 minutes on one H100 is the aim (full Beauty, all 30 blocks).
#
#   bash bench/gpu_check.sh                    # full Beauty, on the GPU the jobs see
#   GPU_CHECK_USERS=150 GPU_CHECK_LAYERS=2 GPU_CHECK_FINETUNE_EPOCHS=1 bash bench/gpu_check.sh   # CPU smoke run
#
# Settings (environment): GPU_CHECK_USERS (a seeded subsample of users; 0 or unset: all),
# GPU_CHECK_LAYERS (model.backbone_layers; unset: all 30), GPU_CHECK_FINETUNE_EPOCHS (default 2),
# GPU_CHECK_PRECISIONS (default "no bf16"), GPU_CHECK_OUT (default bench/out/gpu_check).
# Needs the GGUF in the cache (`make smollm2`, or $LLM4REC_CACHE pointing at a copy) and
# ../shared/data/beauty/ (reviews.csv.gz, items_titles.jsonl.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
SNAKEMAKE=${SNAKEMAKE:-$ROOT/.venv/bin/snakemake}
OUT=$(realpath -m "${GPU_CHECK_OUT:-bench/out/gpu_check}")
PRECISIONS=${GPU_CHECK_PRECISIONS:-"no bf16"}
START=$(date +%s)

"$PY" -m llm4rec.model.backbone_store fetch smollm2 >/dev/null  # the cached GGUF, or a clear error
mkdir -p "$OUT"
WORK="$OUT/work"
if [ ! -d "$WORK" ]; then
    # A copy of what a fresh clone holds, so that results/ of the checkout stay untouched.
    mkdir -p "$WORK"
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -f "$f" ] && mkdir -p "$WORK/$(dirname "$f")" && cp -p "$f" "$WORK/$f"
    done
fi
"$PY" bench/gpu_check_summary.py config --work "$WORK"

for mp in $PRECISIONS; do
    printf 'launch: {mixed_precision: "%s"}\n' "$mp" > "$WORK/precision.yaml"
    SAMPLER=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu_memory_$mp.csv" &
        SAMPLER=$!
    fi
    t0=$(date +%s)
    (cd "$WORK" && "$SNAKEMAKE" --cores all --configfile gpu_check.yaml precision.yaml \
        --forcerun pretrain results/beauty_gpu/full-s0/metrics.json > "$OUT/snakemake_$mp.log" 2>&1) \
        || { [ -n "$SAMPLER" ] && kill "$SAMPLER"; echo "run $mp failed: see $OUT/snakemake_$mp.log" >&2; exit 1; }
    [ -n "$SAMPLER" ] && kill "$SAMPLER"
    "$PY" bench/gpu_check_summary.py collect --work "$WORK" --out "$OUT/$mp" --wall $(( $(date +%s) - t0 ))
done
"$PY" bench/gpu_check_summary.py report --out "$OUT" --precisions $PRECISIONS
echo "total wall time: $(( $(date +%s) - START )) s"
