"""ONE schedule object of the step: learning rate AND Masking-Warmup centre.

DESIGN.md section 2: the learning-rate schedule and the mask-centre schedule must never
drift apart, so both are read from the same `TrainSchedule(step)` call, and every boundary is
a fraction of `config.total_steps` (the paper's epochs / 48). The optimiser reads `lr` from
this object (optax calls `schedule.lr(count)`) and the objective reads `mask_center` from it
inside the same jitted step, with the same step counter.
"""
from __future__ import annotations

import jax.numpy as jnp

from dream_jax import masking


def peak_learning_rate(config) -> float:
  """lr = optim.lr if set, else base_lr * batch / 256 (paper: 1e-4 * 2048/256 = 8e-4)."""
  o = config.optim
  if o.lr is not None:
    return float(o.lr)
  return float(o.base_lr) * config.batch_size / 256.0


class TrainSchedule:
  """`schedule(step) -> {'lr': f32, 'mask_center': f32, 'progress': f32}` (jittable).

  lr: linear warmup from 0 over `schedule.warmup` of the run, then constant (paper) or a
  half cosine down to `final_lr_frac * peak` ('warmup_cosine').
  mask_center: `masking.mask_ratio_center(progress, config.masking)`.
  """

  def __init__(self, config):
    self.total_steps = int(config.total_steps)
    self.kind = config.schedule.kind
    self.warmup_frac = float(config.schedule.warmup)
    self.final_frac = float(config.schedule.final_lr_frac)
    self.peak = peak_learning_rate(config)
    self.masking_cfg = config.masking

  def progress(self, step):
    return jnp.asarray(step, jnp.float32) / float(self.total_steps)

  def lr(self, step):
    p = self.progress(step)
    w = self.warmup_frac
    # (step + 1) so the very first update already moves (optax counts from 0).
    warm = jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0)
                       / max(1.0, w * self.total_steps)) if w > 0 else 1.0
    if self.kind == "warmup_constant":
      return self.peak * warm
    if self.kind == "warmup_cosine":
      frac = jnp.clip((p - w) / max(1e-12, 1.0 - w), 0.0, 1.0)
      cos = self.final_frac + (1.0 - self.final_frac) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
      return self.peak * jnp.where(p < w, warm, cos)
    raise ValueError(f"config.schedule.kind: unknown {self.kind!r}")

  def mask_center(self, step):
    return jnp.asarray(masking.mask_ratio_center(self.progress(step), self.masking_cfg),
                       jnp.float32)

  def __call__(self, step) -> dict:
    return dict(lr=jnp.asarray(self.lr(step), jnp.float32), mask_center=self.mask_center(step),
                progress=self.progress(step))
