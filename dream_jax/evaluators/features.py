"""Frozen features of an evaluator's data, computed once per evaluation and shared.

`image_features(...)` runs a named predict function over a `datasets.Split`'s images in
fixed-size batches (multi-host: see common.map_batches) and caches the result in the
evaluation's `FeatureCache` under (predict fn, data entry, split): a colour probe and a
colour few-shot evaluator on the same data compute the encoder pass once.
"""
from __future__ import annotations

import numpy as np

from dream_jax.evaluators import datasets
from dream_jax.evaluators.common import FeatureCache, map_batches


def image_features(predict_fns, pred: str, variables, data_spec, split: str, run_config, *,
                   cache: FeatureCache | None, batch: int):
  """(features: the predict fn's output pytree of [N, ...] numpy arrays, datasets.Split)."""
  data = datasets.load_split(data_spec, run_config, split)
  fn = predict_fns[pred]

  def compute():
    return map_batches(lambda b: fn(variables, b), {"image": data.images}, batch)

  if cache is None:
    return compute(), data
  return cache.get(("image", pred, datasets.spec_key(data_spec), split), compute), data


def caption_features(predict_fns, pred: str, variables, captions, *, cache, batch: int,
                     key=None) -> np.ndarray:
  """[n, E] caption embeddings by the predict fn `pred(variables, list[str])`."""
  arr = np.asarray(list(captions), dtype=object)
  fn = predict_fns[pred]

  def compute():
    return map_batches(lambda b: fn(variables, list(b["caption"])), {"caption": arr}, batch)

  if cache is None or key is None:
    return compute()
  return cache.get(("text", pred, key), compute)


def pooled(features: dict, pooling: str, final_norm: bool) -> np.ndarray:
  """Picks 'buffer_mean' / 'all_mean' with or without the encoder's final LayerNorm."""
  if pooling not in ("buffer_mean", "all_mean"):
    raise ValueError(f"pooling must be 'buffer_mean' or 'all_mean', got {pooling!r}")
  return np.asarray(features[pooling if final_norm else f"{pooling}_no_ln"], np.float64)
