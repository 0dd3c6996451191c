"""FID / IS of generated images against held-out reference images, a PROXY Fréchet distance
when no Inception weights are present, and CLIP scores.

Prompts are the captions of the reference set (`reference='eval'`: the run's own eval
split, e.g. held-out CC12M shards for the paper configs, held-out shapes for the demo); the
sampler predict fn named by `pred` ('sample' plain, 'sample_sad' SAD) draws them in batches
of `batch` (every call one shape, so the jitted decoder compiles once). Hosts split the
prompts and gather the features (common.map_batches).

Results:
  fid, is_mean, is_std          with `inception_weights` (the standard FID network,
                                dream_jax/evaluators/inception.py; torch-fidelity's protocol)
  proxy_fd_<proxy_features>     without weights: the Fréchet distance on features of a
                                network that needs no download; 'pixels' (default:
                                frechet.pixel_features: layout, palette and edge statistics)
                                or 'inception_random' (the FID Inception with a fixed seed-0
                                random initialisation: model-independent, slow on CPU).
                                NOT FID; compare only with the same features and n.
  <fd key>_ref_halves           the same distance between two halves of the reference set:
                                the floor that sample noise alone gives at this n/2
  clip_score_internal           100 * mean max(cos(image, prompt), 0) with the MODEL'S OWN
                                towers (biased towards the model; labelled internal), beside
  clip_score_internal_real      the same on the real reference images and their captions
  clip_score_external           when `external_clip_scorer='module:function'` names a
                                function (images uint8 [N,H,W,3], prompts) -> [N] scores
Reference statistics are cached under `stats_dir` ('' = ~/.cache/dream_jax/fd_stats) per
dataset, resolution, feature network and n.
Keys: configs/evaluators.py:fid.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.data.pipeline import to_unit_range
from dream_jax.evaluators import frechet
from dream_jax.evaluators.common import map_batches


def reference_source(run_config):
  """The run's eval record source (random access `load(i, flip) -> image uint8, caption`)."""
  from dream_jax.data import _open_source   # the records, captions included (not batches)
  src, _ = _open_source(run_config, "eval")
  return src


def reference_key(run_config, features: str, version: str, n: int) -> str:
  """File stem naming the reference set (data, resolution), feature network and n."""
  d = run_config.data
  ident = dict(name=d.name, path=d.path, eval_path=d.eval_path, tfds=d.tfds_name,
               split=d.eval_split, seed=run_config.seed, size=d.image_size,
               max_objects=d.max_objects, two=d.two_object_prob, features=features,
               version=version, n=n)
  h = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
  return f"{d.name}_{d.image_size}px_{features}_{n}_{h}"


class FeatureNet:
  """uint8 images -> {'pool': [N, D], optional 'logits_unbiased'} with the chosen network."""

  def __init__(self, inception_weights: str, proxy_features: str):
    from dream_jax.evaluators import inception
    self.is_fid = bool(inception_weights)
    if self.is_fid:
      self.name, variables = "inception", inception.load_variables(inception_weights)
      # Cache identity of the weights file: its name and size.
      self.version = f"{os.path.basename(inception_weights)}:{os.path.getsize(inception_weights)}"
    elif proxy_features == "pixels":
      self.name, variables = "pixels", None
      self.version = f"pixels_v{frechet.PIXEL_FEATURES_VERSION}"
    elif proxy_features == "inception_random":
      self.name, variables = "inception_random", inception.random_variables(0)
      self.version = "seed0"
    else:
      raise ValueError("fid.proxy_features must be 'pixels' or 'inception_random', got "
                       f"{proxy_features!r}")
    if variables is not None:
      net = inception.FIDInceptionV3()
      self._apply = jax.jit(lambda im: net.apply(variables, im))

  def __call__(self, images: np.ndarray) -> dict:
    if self.name == "pixels":
      return dict(pool=frechet.pixel_features(images))
    out = self._apply(jnp.asarray(images, jnp.uint8))
    return dict(pool=np.asarray(out["pool"]), logits_unbiased=np.asarray(out["logits_unbiased"]))


class Evaluator:
  """FID / proxy FD / IS / CLIP score (module docstring)."""

  def __init__(self, predict_fns, *, context, pred, num_samples, batch, seed, reference,
               inception_weights, proxy_features, stats_dir, clip_score, pred_image,
               pred_text, external_clip_scorer, cfg, temperature, feature_batch):
    if reference != "eval":
      raise ValueError(f"fid.reference: only 'eval' (the run's eval split), got {reference!r}")
    self.predict_fns, self.context = predict_fns, context
    self.pred, self.n, self.batch, self.seed = pred, int(num_samples), int(batch), int(seed)
    self.net = FeatureNet(inception_weights, proxy_features)
    self.stats_dir = os.path.expanduser(stats_dir or "~/.cache/dream_jax/fd_stats")
    self.clip_score, self.pred_image, self.pred_text = bool(clip_score), pred_image, pred_text
    self.external = external_clip_scorer
    self.overrides = {k: v for k, v in dict(cfg=cfg, temperature=temperature).items()
                      if v is not None}
    del feature_batch   # features run on each sampler batch
    self._src = None

  def _reference_stats_path(self) -> str:
    return os.path.join(self.stats_dir,
                        reference_key(self.context.run_config, self.net.name,
                                      self.net.version, self.n) + ".npz")

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step, cache
    if self._src is None:
      self._src = reference_source(self.context.run_config)
    src = self._src
    if len(src) < self.n:
      raise ValueError(f"fid.num_samples={self.n} > {len(src)} reference examples "
                       "(raise data.eval_size)")
    stats_path = self._reference_stats_path()
    have_ref = os.path.exists(stats_path)
    sample = self.predict_fns[self.pred]
    key = jax.random.key(self.seed)
    t_sample = [0.0]

    def fn(b):
      recs = [src.load(int(i), False) for i in b["index"]]
      prompts = [r["caption"] for r in recs]
      t0 = time.perf_counter()
      gen = np.asarray(sample(variables, None, prompts,
                              jax.random.fold_in(key, int(b["index"][0])),
                              **self.overrides)["images"])
      t_sample[0] += time.perf_counter() - t0
      out = {f"gen_{k}": v for k, v in self.net(gen).items()}
      real = np.stack([r["image"] for r in recs])
      if not have_ref or self.clip_score:
        out.update({f"ref_{k}": v for k, v in self.net(real).items()})
      if self.clip_score:
        txt = self.predict_fns[self.pred_text](variables, prompts)
        emb = self.predict_fns[self.pred_image]
        out["cos_gen"] = (emb(variables, dict(image=to_unit_range(gen))) * txt).sum(1)
        out["cos_real"] = (emb(variables, dict(image=to_unit_range(real))) * txt).sum(1)
      if self.external:
        mod, _, name = self.external.partition(":")
        out["external"] = np.asarray(getattr(importlib.import_module(mod), name)(gen, prompts))
      return out

    res = map_batches(fn, {"index": np.arange(self.n)}, self.batch)
    gen_stats = frechet.statistics(res["gen_pool"])
    if have_ref:
      with np.load(stats_path) as f:
        ref = dict(mu=f["mu"], sigma=f["sigma"], halves=float(f["halves"]))
    else:
      ref = frechet.statistics(res["ref_pool"])
      half = self.n // 2
      a, b = (frechet.statistics(res["ref_pool"][s]) for s in (slice(0, half), slice(half, None)))
      ref["halves"] = frechet.frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
      if jax.process_index() == 0:
        os.makedirs(self.stats_dir, exist_ok=True)
        tmp = stats_path + f".tmp{os.getpid()}.npz"
        np.savez(tmp, mu=ref["mu"], sigma=ref["sigma"], halves=ref["halves"])
        os.replace(tmp, stats_path)
    fd = frechet.frechet_distance(gen_stats["mu"], gen_stats["sigma"], ref["mu"], ref["sigma"])
    name = "fid" if self.net.is_fid else f"proxy_fd_{self.net.name}"
    out = {name: fd, f"{name}_ref_halves": ref["halves"], "num_samples": float(self.n),
           "sampling_seconds": t_sample[0]}
    if self.net.is_fid:
      out["is_mean"], out["is_std"] = frechet.inception_score(res["gen_logits_unbiased"])
    if self.clip_score:
      out["clip_score_internal"] = float(100 * np.clip(res["cos_gen"], 0, None).mean())
      out["clip_score_internal_real"] = float(100 * np.clip(res["cos_real"], 0, None).mean())
    if self.external:
      out["clip_score_external"] = float(np.mean(res["external"]))
    return out
