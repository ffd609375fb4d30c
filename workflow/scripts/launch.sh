#!/usr/bin/env bash
# Usage: launch.sh [--mixed_precision no|bf16|fp16] GPUS CPU_PROCS (SCRIPT | -m MODULE) [ARGS...]
# Runs SCRIPT (or MODULE) under `accelerate launch`: one process per GPU the job was given (GPUS, the
# rule's `gpu` resource); without GPUs (GPUS=0) CPU_PROCS processes, one unless testing
# (more than one: processes of type MULTI_CPU). Several processes talk on a free local port.
# --mixed_precision is accelerate's (`launch.mixed_precision`; default no): autocast with
# float32 weights, bf16 or fp16 (fp16 with loss scaling, on GPUs).
set -euo pipefail
mixed=no
if [ "${1:-}" = "--mixed_precision" ]; then
    mixed=$2
    shift 2
fi
case "$mixed" in
    no|bf16|fp16) ;;
    *) echo "launch.sh: --mixed_precision must be no, bf16 or fp16, got '$mixed'" >&2; exit 2 ;;
esac
# OpenMP threads that wait by spinning take the cores from every other job on a shared machine
# (BENCHMARKS.md, "Training beside other work"): wait passively unless the caller chose a policy.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
gpus=${1:-0}
cpu=$2
shift 2
if [ "$gpus" -gt 0 ]; then n=$gpus; else n=$cpu; fi
args=(--num_machines 1 --mixed_precision "$mixed" --dynamo_backend no --num_processes "$n")
if [ "$n" -gt 1 ]; then
    port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    args+=(--multi_gpu --main_process_port "$port")
fi
echo "launch.sh: $n process(es) (gpu resource: $gpus, mixed precision: $mixed, OMP_WAIT_POLICY $OMP_WAIT_POLICY)" >&2
exec accelerate launch "${args[@]}" "$@"
