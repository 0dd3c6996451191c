"""Helpers shared by evaluators: multi-host gathering and passes over the eval data."""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np


def gather_hosts(x: np.ndarray) -> np.ndarray:
  """Concatenates a host-local [n, ...] array over processes (identity on one host).

  Hosts may hold different n only when every host pads to the same count; the eval pipeline
  gives every host the same number of slots, so padded rows are removed afterwards with the
  gathered `valid` mask.
  """
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  g = multihost_utils.process_allgather(np.asarray(x), tiled=True)
  return np.asarray(g)


def eval_pass(eval_data, fn: Callable[[dict], dict], keys: Iterable[str] = ()) -> dict:
  """Runs `fn(batch) -> dict of [b, ...] arrays` over one pass of `eval_data` and returns the
  concatenation over batches AND hosts of fn's outputs plus `keys` of the batch, restricted
  to valid rows."""
  parts: dict[str, list] = {}
  for batch in eval_data.iterator():
    out = dict(fn(batch))
    for k in keys:
      out[k] = np.asarray(batch[k])
    out["valid"] = np.asarray(batch.get("valid", np.ones(len(batch["clip_ids"]), bool)))
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v))
  full = {k: gather_hosts(np.concatenate(v)) for k, v in parts.items()}
  valid = full.pop("valid").astype(bool)
  return {k: v[valid] for k, v in full.items()}
