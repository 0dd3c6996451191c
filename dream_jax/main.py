"""DREAM training entry point (`dream-train`, or `python main.py` from a checkout).

  dream-train --config=configs/demo.py --workdir=/tmp/dream_demo
  python main.py --config=configs/dream_b16.py:runlocal --workdir=W --config.total_steps=2

`--config` is an ml_collections config file (`path[:arg]`), locked so an unknown
`--config.x=y` override is an error. The run resumes automatically from W/checkpoints.
On several hosts (TPU pods, multi-node GPU) `jax.distributed.initialize()` is called first.

Output: one progress line per `log_every` steps (with an ETA that leaves out compilation and
evaluation time), one line per evaluation, a summary at the end. Library logging stays at
WARNING unless `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG, and the traceback of a
config or input error, which otherwise prints as one line).
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from dream_jax.utils import console, malloc, xla_cpu

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints).")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir whose config.json differs in non-structural keys only (total_steps, "
    "logging, evals, sampling, checkpoint cadence; dream_jax/train/workdir.py).")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_host() -> bool:
  env = os.environ
  return any(k in env for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS",
                                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                                "SLURM_NTASKS")) and env.get("JAX_SKIP_DISTRIBUTED") != "1"


@console.user_errors
def main(argv):
  del argv
  console.quiet_libraries()
  try:   # Keep TensorFlow (imported by optional TensorBoard writers) off the accelerators.
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except Exception:   # noqa: BLE001  TF is optional
    pass
  import jax
  if _multi_host():
    jax.distributed.initialize()
  from configs.validation import validate
  from dream_jax.train.trainer import train
  config = _CONFIG.value
  validate(config, for_run=True)   # overrides may have broken what get_config validated
  logging.info("devices: %s", jax.devices())
  train(config, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value)


def run():
  """Console-script entry point. On Linux it first re-executes itself once under a caching
  malloc (tcmalloc, else jemalloc, when installed; else glibc tunables;
  `DREAM_NO_MALLOC_TUNING=1` turns this off): XLA:CPU's per-step buffers otherwise cost a
  third of the CPU time in page faults (dream_jax/utils/malloc.py). XLA:CPU's defaults are
  then completed (dream_jax/utils/xla_cpu.py: oneDNN matmuls)."""
  malloc.reexec_with_tuned_malloc()
  xla_cpu.use_default_flags()
  app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
  run()
