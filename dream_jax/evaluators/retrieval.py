"""Image <-> text retrieval recall@K in both directions (cosine similarity of the model's
unit-norm embeddings), on captioned held-out images.

A hit for an image query is its own caption OR any caption identical to it (identical
captions are indistinguishable to any model; the procedural shapes captions repeat), and the
same for text queries. `chance@K` is the expected recall of a random ranking under that rule.
Keys (configs/evaluators.py:retrieval): pred_image, pred_text, data, ks, feature_batch.
Results: i2t_r@K, t2i_r@K, chance@K, num_examples.
"""
from __future__ import annotations

import numpy as np

from dream_jax.evaluators import datasets
from dream_jax.evaluators.features import caption_features, image_features


def recall_at_k(img: np.ndarray, txt: np.ndarray, same: np.ndarray, ks=(1, 5, 10)) -> dict:
  """img, txt [N, E]; same [N, N] bool (caption i equals caption j; diagonal True)."""
  sim = img @ txt.T
  n = len(img)
  out = {}
  order_i2t = np.argsort(-sim, axis=1, kind="stable")          # per image: captions ranked
  order_t2i = np.argsort(-sim.T, axis=1, kind="stable")        # per caption: images ranked
  rows = np.arange(n)[:, None]
  hit_i2t = same[rows, order_i2t]                              # [N, N] rank -> hit
  hit_t2i = same.T[rows, order_t2i]
  m = same.sum(1)                                              # relevant items per query
  for k in ks:
    k = int(k)
    out[f"i2t_r@{k}"] = float(hit_i2t[:, :k].any(1).mean())
    out[f"t2i_r@{k}"] = float(hit_t2i[:, :k].any(1).mean())
    # P(at least one of m relevant among k random picks of n) = 1 - C(n-m, k) / C(n, k).
    miss = np.ones(n)
    for j in range(min(k, n)):
      miss *= np.clip((n - m - j) / (n - j), 0.0, 1.0)
    out[f"chance@{k}"] = float((1 - miss).mean())
  out["num_examples"] = float(n)
  return out


class Evaluator:
  """Retrieval (module docstring)."""

  def __init__(self, predict_fns, *, context, pred_image, pred_text, data, ks, feature_batch):
    self.predict_fns, self.context = predict_fns, context
    self.pred_image, self.pred_text, self.data = pred_image, pred_text, data
    self.ks, self.feature_batch = tuple(int(k) for k in ks), int(feature_batch)

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step
    img, d = image_features(self.predict_fns, self.pred_image, variables, self.data, "test",
                            self.context.run_config, cache=cache, batch=self.feature_batch)
    if not d.captions:
      raise ValueError("retrieval needs a captioned source (data.source 'shapes' or 'mnist')")
    txt = caption_features(self.predict_fns, self.pred_text, variables, d.captions,
                           cache=cache, batch=self.feature_batch,
                           key=("captions", datasets.spec_key(self.data)))
    caps = np.asarray(d.captions, dtype=object)
    same = caps[:, None] == caps[None, :]
    return recall_at_k(np.asarray(img, np.float64), np.asarray(txt, np.float64), same, self.ks)
