"""Mini-GenEval on the shapes data: do samples show what the prompt says?

Samples held-out prompts (`dream_jax.data.shapes.heldout_prompts`, the captions of the
eval split, never trained on) with each decoding mode and checks every image against the
prompt's attributes with `check_batch` (colour blobs, shape, size, grid cell / relation,
object count). Reported per mode ('plain' -> predict fn `sample`, 'sad' -> `sample_sad`,
'best_of_k' -> `best_of_k`) as '<mode>/<check>' (the share of images passing, e.g.
'sad/color_ok', 'plain/all_ok'), '<mode>/seconds' (wall time of the mode's sampling with its
program already compiled: one untimed warm-up call on the first batch goes first) and
'<mode>/warmup_seconds' (that call: compilation plus one batch). Two reference rows come from the real
rendered held-out images, no model involved:
  'real/<check>'    the checker on real images with their own prompts (the ceiling);
  'chance/<check>'  the checker on real images with ANOTHER example's prompt (rolled by one):
                    what an image that ignores its prompt scores.
Checks: colour, shape, size, position (named cell), count, relation (GenEval's categories,
with an exact checker instead of a detector), and all_ok (every check of the prompt).
Keys (configs/evaluators.py:geneval): num_prompts, modes ('plain', 'sad', 'best_of_k'),
batch (prompts per sampler call; every call has this size so it compiles once), seed,
max_objects (0: the held-out split's own prompts; 1: the held-out indices drawn as
single-object examples, never trained on either), and
sampler overrides cfg, temperature, num_candidates, sad_step, sad_share (None = the run's
sampling config), save_grids (the first 16 samples per mode go to
W/samples/geneval_<step>_<mode>.png when the context has a workdir).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from dream_jax.data import shapes
from dream_jax.utils.images import captioned_grid, save_png

MODES = {"plain": "sample", "sad": "sample_sad", "best_of_k": "best_of_k"}
OVERRIDES = ("cfg", "temperature", "num_candidates", "sad_step", "sad_share")
CHECKS = ("color_ok", "shape_ok", "size_ok", "cell_ok", "relation_ok", "position_ok",
          "count_ok", "all_ok")


def stack_attrs(pairs) -> dict:
  """[(caption, attrs)] -> {key: [N, ...] int32} for `check_batch`."""
  return {k: np.stack([np.asarray(a[k]) for _, a in pairs]) for k in shapes.ATTR_KEYS}


def reference_rows(config, n: int, max_objects: int = 0) -> dict:
  """'real/*' and 'chance/*' accuracies of the checker on rendered held-out images
  (max_objects: 0 = the data's, else the prompts' draw; see `Evaluator`)."""
  d = config.data
  m = max_objects or d.max_objects
  images = np.stack([shapes.make_example(config.seed, shapes.HELDOUT_OFFSET + i,
                                           d.image_size, max_objects=m,
                                           two_object_prob=d.two_object_prob)["image"]
                     for i in range(n)])
  pairs = shapes.heldout_prompts(n, config.seed, max_objects=m,
                                   two_object_prob=d.two_object_prob)
  attrs = stack_attrs(pairs)
  rolled = {k: np.roll(v, 1, axis=0) for k, v in attrs.items()}
  out = {f"real/{k}": v for k, v in shapes.check_batch(images, attrs).items()}
  out.update({f"chance/{k}": v for k, v in shapes.check_batch(images, rolled).items()})
  return out


class Evaluator:
  """Mini-GenEval (trainer contract: see dream_jax/evaluators/__init__.py)."""

  def __init__(self, predict_fns, *, context, num_prompts, modes, batch, seed, max_objects,
               cfg, temperature, num_candidates, sad_step, sad_share, save_grids):
    config = context.run_config
    if config.data.name != "shapes":
      raise ValueError("evals kind='geneval' needs config.data.name='shapes' (its "
                       f"prompts have checkable attributes), got {config.data.name!r}")
    self.predict_fns, self.config = predict_fns, config
    self.workdir = context.workdir if save_grids else None
    self.num_prompts, self.modes = int(num_prompts), tuple(modes)
    bad = [m for m in self.modes if m not in MODES]
    if bad:
      raise ValueError(f"config.evals.*.modes: unknown {bad}; known {tuple(MODES)}")
    self.batch, self.seed = int(batch), int(seed)
    given = dict(cfg=cfg, temperature=temperature, num_candidates=num_candidates,
                 sad_step=sad_step, sad_share=sad_share)
    self.overrides = {k: v for k, v in given.items() if v is not None}
    d = config.data
    self.max_objects = int(max_objects)
    self.pairs = shapes.heldout_prompts(self.num_prompts, config.seed,
                                          max_objects=self.max_objects or d.max_objects,
                                          two_object_prob=d.two_object_prob)
    self.attrs = stack_attrs(self.pairs)
    self._reference = None

  def samples(self, fn, variables, mode: str, first_batch_only: bool = False) -> np.ndarray:
    captions = [c for c, _ in self.pairs]
    if first_batch_only:
      captions = captions[: self.batch]
    key = jax.random.fold_in(jax.random.key(self.seed), list(MODES).index(mode))
    kw = dict(self.overrides)
    if mode == "plain":
      kw = {k: v for k, v in kw.items() if k in ("cfg", "temperature")}
    elif mode == "best_of_k":
      kw.pop("sad_step", None)
      kw.pop("sad_share", None)
    out = []
    for i in range(0, len(captions), self.batch):
      # Same-size calls compile once; the last short batch is padded with repeats.
      chunk = captions[i: i + self.batch]
      pad = self.batch - len(chunk) if len(captions) > self.batch else 0
      res = fn(variables, None, chunk + chunk[-1:] * pad, jax.random.fold_in(key, i), **kw)
      out.append(np.asarray(res["images"])[: len(chunk)])
    return np.concatenate(out)

  def run(self, variables, *, step=None, cache=None) -> dict:
    del cache   # prompts come from the held-out captions directly
    predict_fns = self.predict_fns
    if self._reference is None:
      self._reference = reference_rows(self.config, self.num_prompts, self.max_objects)
    out = dict(self._reference)
    for mode in self.modes:
      # Times compare decoding modes (SAD against best-of-K), so compilation, which differs
      # per program and is paid once per process, stays out of them.
      t0 = time.perf_counter()
      self.samples(predict_fns[MODES[mode]], variables, mode, first_batch_only=True)
      out[f"{mode}/warmup_seconds"] = time.perf_counter() - t0
      t0 = time.perf_counter()
      images = self.samples(predict_fns[MODES[mode]], variables, mode)
      out[f"{mode}/seconds"] = time.perf_counter() - t0
      res = shapes.check_batch(images, self.attrs)
      out.update({f"{mode}/{k}": float(v) for k, v in res.items()})
      if self.workdir and jax.process_index() == 0:
        captions = [c for c, _ in self.pairs[:16]]
        save_png(captioned_grid(images[:16], captions, ncol=8),
                 os.path.join(self.workdir, "samples", f"geneval_{step or 0:06d}_{mode}.png"))
    out["num_prompts"] = float(self.num_prompts)
    return out
