#!/usr/bin/env bash
# Usage: launch.sh NPROC SCRIPT [ARGS...]
# Runs SCRIPT under `accelerate launch`: one process, or NPROC processes (one per GPU; on a
# machine without GPUs, NPROC CPU processes of type MULTI_CPU) on a free local port.
set -euo pipefail
n=$1
shift
args=(--num_machines 1 --mixed_precision no --dynamo_backend no --num_processes "$n")
if [ "$n" -gt 1 ]; then
    port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    args+=(--multi_gpu --main_process_port "$port")
fi
exec accelerate launch "${args[@]}" "$@"
