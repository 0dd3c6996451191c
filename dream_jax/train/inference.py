"""Loading a trained run for sampling and evaluation: only W/config.json and a checkpoint.

`load_for_inference(workdir, step=None) -> (config, model, variables_ema, frozen)` restores
ONLY the EMA parameters and the BatchNorm running statistics (the 'ema' item of the
checkpoint; the optimiser state is never read) onto the current devices, replicated.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections

from dream_jax.train import checkpoint as ckpt_lib


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  with open(path) as f:
    raw = json.load(f)

  def tuples(x):   # JSON turned tuples into lists; configs use tuples (e.g. word_vocab)
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x

  c = ml_collections.ConfigDict(tuples(_upgrade(raw)))
  # Keys added to the config after the run was written take their defaults, which keep the
  # behaviour such a run was trained with (every new option defaults to the old behaviour).
  from configs import common
  _fill_missing(c, common.base_config())
  c.lock()
  return c


def _upgrade(raw: dict) -> dict:
  """Renames keys and values of configs written before a rename (older workdirs)."""
  data = raw.get("data", {})
  if data.get("name") == "embedded":          # the shapes source was called 'embedded'
    data["name"] = "shapes"
  if "embedded_size" in data:
    data["shapes_size"] = data.pop("embedded_size")
  data.pop("shuffle_buffer", None)                       # never read
  # One key each: the image side is data.image_size; the head's sampling respacing is
  # sampling.num_diffusion_steps (the sampler always passed it explicitly).
  raw.get("tokenizer", {}).pop("image_size", None)
  raw.get("model", {}).pop("num_sampling_steps", None)
  return raw


def _fill_missing(c: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> None:
  for key, value in base.items():
    if key not in c:
      c[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        c[key], ml_collections.ConfigDict):
      _fill_missing(c[key], value)


def load_for_inference(workdir: str, step: Optional[int] = None):
  """(config, model, variables_ema {'params', 'batch_stats'}, frozen {'vae', 'text'}).

  step=None takes the latest checkpoint. A checkpoint that does not fit the saved config
  is refused with the mismatching names.
  """
  from dream_jax.train.components import Components
  config = load_config(workdir)
  comp = Components(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  step = ckpt.latest_step() if step is None else int(step)
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
  shapes = jax.eval_shape(comp.model.init, jax.random.key(0))
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), target)
  variables = ckpt.restore_ema(step, target)
  ckpt.close()
  return config, comp.model, variables, comp.init_frozen()
