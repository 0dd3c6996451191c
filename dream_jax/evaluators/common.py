"""Helpers shared by evaluators: multi-host gathering, batched predict calls over arrays that
every host holds, passes over the run's eval data, and the per-evaluation feature cache."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Hashable, Iterable

import jax
import numpy as np


def gather_hosts(x: np.ndarray) -> np.ndarray:
  """Concatenates a host-local [n, ...] array over processes (identity on one host).

  Every host must pass the same n (pad, then drop padded rows with a gathered mask).
  """
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def host_slice(n: int) -> tuple[int, int, int]:
  """(lo, hi, per_host): this host's contiguous rows [lo, hi) of n, each host per_host slots."""
  per_host = math.ceil(n / jax.process_count())
  lo = min(n, jax.process_index() * per_host)
  return lo, min(n, lo + per_host), per_host


def map_batches(fn: Callable[[dict], Any], arrays: dict[str, np.ndarray], batch: int) -> Any:
  """Runs `fn(batch_dict) -> pytree of [b, ...]` over rows of `arrays` (the SAME full arrays
  on every host) and returns the pytree of [N, ...] numpy results, identical on every host.

  Rows are split contiguously over hosts; each host calls `fn` on fixed-size batches of
  `batch` rows (the last one padded with repeats, so every call has one shape and compiles
  once), and the per-host results are gathered with `process_allgather`.
  """
  n = len(next(iter(arrays.values())))
  lo, hi, per_host = host_slice(n)
  steps = max(1, math.ceil(per_host / batch))
  parts = []
  for s in range(steps):
    idx = np.arange(lo + s * batch, lo + (s + 1) * batch)
    idx = np.minimum(idx, max(lo, hi - 1)) if hi > lo else np.zeros(batch, np.int64)
    parts.append(jax.tree.map(np.asarray, fn({k: v[idx] for k, v in arrays.items()})))
  local = jax.tree.map(lambda *xs: np.concatenate(xs)[:per_host], *parts)
  full = jax.tree.map(gather_hosts, local)
  # Rows past each host's real share are padding; keep host h's first (hi_h - lo_h) rows.
  keep = np.concatenate([np.arange(h * per_host, min(n, (h + 1) * per_host))
                         for h in range(jax.process_count())])
  return jax.tree.map(lambda x: x[keep], full)


def eval_pass(eval_data, fn: Callable[[dict], dict], keys: Iterable[str] = ()) -> dict:
  """Runs `fn(batch) -> dict of [b, ...] arrays` over one pass of `eval_data` (a DataSource
  of host-local batches with a `valid` mask) and returns the concatenation over batches AND
  hosts of fn's outputs plus `keys` of the batch, restricted to valid rows."""
  parts: dict[str, list] = {}
  for batch in eval_data.iterator():
    out = dict(fn(batch))
    for k in keys:
      out[k] = np.asarray(batch[k])
    out["valid"] = np.asarray(batch["valid"])
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v))
  full = {k: gather_hosts(np.concatenate(v)) for k, v in parts.items()}
  valid = full.pop("valid").astype(bool)
  return {k: v[valid] for k, v in full.items()}


class FeatureCache:
  """Features computed once per evaluation (one set of weights) and shared by evaluators.

  Key: (predict fn name, data key, variant); the trainer makes a fresh cache for every
  evaluation step, so weights never change under a cached entry.
  """

  def __init__(self):
    self._store: dict[Hashable, Any] = {}
    self.hits = 0

  def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
    if key in self._store:
      self.hits += 1
    else:
      self._store[key] = compute()
    return self._store[key]


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What every evaluator is given besides its own keys: the run's config (read only to
  open data the way the run saw it: image size, tokenizer, shapes options) and the workdir
  (for files such as sample grids; None = write nothing)."""
  run_config: Any
  workdir: str | None = None


def fit_by_scan(loss_fn: Callable, tx, params, batch_indices):
  """Trains `params` with the optax transformation `tx`, one step per row of
  `batch_indices` ([steps, batch] int32 rows into the cached features), as one jitted
  `lax.scan`; `loss_fn(params, idx) -> scalar`. Returns the final params. (The probe heads:
  linear probe, segmentation.)"""
  import optax

  @jax.jit
  def run(p):
    def step(carry, idx):
      p, s = carry
      g = jax.grad(loss_fn)(p, idx)
      upd, s = tx.update(g, s, p)
      return (optax.apply_updates(p, upd), s), None
    return jax.lax.scan(step, (p, tx.init(p)), batch_indices)[0][0]

  return run(params)

