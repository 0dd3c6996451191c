"""DREAM training entry point (`dream-train`, or `python main.py` from a checkout).

  dream-train --config=configs/demo.py --workdir=/tmp/dream_demo
  python main.py --config=configs/dream_b16.py:runlocal --workdir=W --config.total_steps=2

`--config` is an ml_collections config file (`path[:arg]`), locked so an unknown
`--config.x=y` override is an error. The run resumes automatically from W/checkpoints.
On several hosts (TPU pods, multi-node GPU) `jax.distributed.initialize()` is called first.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints).")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir whose config.json differs in non-structural keys only (total_steps, "
    "logging, evals, sampling, checkpoint cadence; dream_jax/train/workdir.py).")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """absl flag parsing, with an unknown `--config.<key>` override named in one line."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:   # ml_collections: the locked config has no such key
    missing = str(e).strip("\"'")
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
           and missing in a.split("=")[0].split(".")[1:]]
    name = bad[0] if bad else f"--config.{missing}"
    raise SystemExit(f"{name}: unknown config key {missing!r} (check the spelling against "
                     "configs/common.py)") from None


def _multi_host() -> bool:
  env = os.environ
  return any(k in env for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS",
                                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                                "SLURM_NTASKS")) and env.get("JAX_SKIP_DISTRIBUTED") != "1"


def main(argv):
  del argv
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
  """Console-script entry point."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
