"""Held-out losses at fixed mask ratios: the two skills measured on data never trained on.

  diffusion_loss@<r>   mean per-sample diffusion loss with mask ratio r (default 0.9), the
                       true caption, and FIXED orders, t and noise (seed), so the number is
                       comparable between steps and runs.
  z_info@<r>           diffusion_loss@<r> with every sample given the NEXT sample's decoder
                       condition z (same positions, t and noise) minus diffusion_loss@<r>:
                       what z tells the head about this image. ~0 means the decoder's output
                       has collapsed to an image-independent condition (the head then samples
                       the marginal token distribution: right colours, scattered patches).
  r1_i2t, r1_t2i       contrastive retrieval recall@1 at mask ratio 0 over the whole eval
                       set: image -> caption and caption -> image by cosine similarity.
                       A hit is the query's own partner OR an item with an identical caption
                       (identical captions are indistinguishable to any model).
  r1_chance            the expected R@1 of a random ranking under that rule (mean over
                       queries of #identical captions / N), printed beside the recalls.
Data: the run's own eval split (`make_dataset(run_config, 'eval')`), opened here.
Keys (configs/evaluators.py:heldout): diffusion_ratio, seed.
"""
from __future__ import annotations

import numpy as np

from dream_jax.evaluators.common import eval_pass


def retrieval_r1(img: np.ndarray, txt: np.ndarray, ids: np.ndarray) -> dict:
  """img, txt [N, E] unit-norm; ids [N, ctx] caption ids. R@1 both ways and the chance level."""
  sim = img @ txt.T
  same = (ids[:, None, :] == ids[None, :, :]).all(-1)       # [N, N] identical captions
  i2t = same[np.arange(len(img)), sim.argmax(1)].mean()
  t2i = same[sim.argmax(0), np.arange(len(img))].mean()
  chance = same.sum(1).mean() / len(img)
  return dict(r1_i2t=float(i2t), r1_t2i=float(t2i), r1_chance=float(chance),
              num_examples=float(len(img)))


class Evaluator:

  def __init__(self, predict_fns, *, context, diffusion_ratio, seed, eval_data=None):
    self.predict_fns, self.context = predict_fns, context
    self.ratio, self.seed = float(diffusion_ratio), int(seed)
    self._data = eval_data     # tests pass a stand-in; otherwise opened on first run

  def data(self):
    if self._data is None:
      from dream_jax.data import make_dataset
      self._data = make_dataset(self.context.run_config, "eval")
    return self._data

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step, cache
    fns = self.predict_fns
    embed_image, embed_text = fns["embed_image"], fns["embed_text"]
    diff_at = fns["diffusion_loss_at"]

    def fn(batch):
      diff = diff_at(variables, batch, self.ratio, self.seed, True)
      return dict(img=embed_image(variables, batch), txt=embed_text(variables, batch),
                  diff=diff["own"], diff_other=diff["other"])

    res = eval_pass(self.data(), fn, keys=("clip_ids",))
    out = retrieval_r1(res["img"].astype(np.float64), res["txt"].astype(np.float64),
                       res["clip_ids"])
    out[f"diffusion_loss@{self.ratio:g}"] = float(res["diff"].mean())
    out[f"z_info@{self.ratio:g}"] = float(res["diff_other"].mean() - res["diff"].mean())
    return out
