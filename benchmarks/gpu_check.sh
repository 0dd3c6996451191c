#!/usr/bin/env bash
# GPU check of the B/16 train step (issue 18): run on a machine with an NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh [extra args for benchmarks/gpu_step.py]
#   DRY_RUN=1 bash benchmarks/gpu_check.sh      # print the commands only
#
# Creates a venv (VENV, default /tmp/dream_gpu_venv) with the pinned requirements and the
# CUDA jax of the SAME pinned version, checks that jax sees a GPU, then runs
# benchmarks/gpu_step.py: the largest global batch that fits, step time, peak memory, MFU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-/tmp/dream_gpu_venv}
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"   # JAX_VERSION, run (DRY_RUN=1 prints instead)

run python3 -m venv "$VENV"
run "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt" "jax[cuda12]==$JAX_VERSION"
run "$VENV/bin/pip" install -q --no-deps -r "$ROOT/requirements-nodeps.txt"
run "$VENV/bin/python" -c "import jax; d = jax.devices(); print(d); assert d[0].platform == 'gpu', 'no GPU visible to jax'"
cd "$ROOT"
run env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 "$VENV/bin/python" benchmarks/gpu_step.py "$@"
