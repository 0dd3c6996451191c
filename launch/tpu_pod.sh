#!/usr/bin/env bash
# Launch a dream_jax run on a Cloud TPU VM pod slice: every host runs the same command and
# main.py calls jax.distributed.initialize(), which discovers the slice by itself on TPU.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a CONFIG=configs/dream_b16.py \
#   WORKDIR=gs://my-bucket/dream_b16 ./launch/tpu_pod.sh [--config.x=y ...]
#
# DRY_RUN=1 prints the commands instead of running them (tests/test_launch.py runs it).
# Before renting the slice, check that the program fits it (docs/scaling.md):
#   python -m dream_jax.tools.aot --config=$CONFIG --topology=v5:4x4x2
#
# The repo is copied to every host, installed there with the pinned requirements plus the
# TPU jaxlib of the same version, then trained. Data paths must be readable from every host
# (gs://...); the workdir must be shared storage (checkpoints are written by all hosts).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
REPO_DIR=${REPO_DIR:-dream_jax}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"   # JAX_VERSION, run (DRY_RUN=1 prints instead)

# Extra arguments are passed to main.py, each quoted for the remote shell.
EXTRA=""
for a in "$@"; do EXTRA+=" $(printf '%q' "$a")"; done

run tar czf /tmp/dream_jax_src.tgz -C "$ROOT" --exclude=.venv --exclude=.git .
run gcloud compute tpus tpu-vm scp /tmp/dream_jax_src.tgz "$TPU_NAME:~/" --zone="$ZONE" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "
  set -e; mkdir -p $REPO_DIR && tar xzf dream_jax_src.tgz -C $REPO_DIR && cd $REPO_DIR
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -r requirements.txt 'jax[tpu]==$JAX_VERSION'
  python main.py --config=$CONFIG --workdir=$WORKDIR$EXTRA"
