# Shared by launch/tpu_pod.sh and benchmarks/gpu_check.sh (sourced, not run): the pinned jax
# version and `run`, which prints a command instead of running it under DRY_RUN=1.
# Expects ROOT (the repository root) to be set by the caller.
# shellcheck shell=bash
JAX_VERSION=$(grep '^jax==' "$ROOT/requirements.txt" | cut -d= -f3 | cut -d' ' -f1)
export JAX_VERSION

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf 'DRY_RUN:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
