"""ONE schedule object of the step: learning rate AND Masking-Warmup centre, both optax
schedules over the same step count.

docs/DESIGN.md section 2: the learning-rate schedule and the mask-centre schedule must never
drift apart, so both are read from the same `TrainSchedule(step)` call, and every boundary is
a fraction of `config.total_steps` (the paper's epochs / 48). The optimiser reads `lr` from
this object and the objective reads `mask_center` from it inside the same jitted step, with
the same step counter.

Both are built from optax's schedule primitives (`linear_schedule`, `cosine_decay_schedule`,
`constant_schedule`, `join_schedules`); boundaries in steps may be fractional (a fraction of
total_steps), which the primitives accept.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def peak_learning_rate(config) -> float:
  """lr = optim.lr if set, else base_lr * batch / 256 (paper: 1e-4 * 2048/256 = 8e-4)."""
  o = config.optim
  if o.lr is not None:
    return float(o.lr)
  return float(o.base_lr) * config.batch_size / 256.0


def lr_schedule(config) -> optax.Schedule:
  """Linear warm-up over `schedule.warmup` of the run, then constant (paper) or a half cosine
  down to `final_lr_frac * peak` ('warmup_cosine').

  The warm-up is peak * min(1, (step + 1) / W) with W = max(1, warmup * total_steps): the
  very first update already moves (optax counts from 0).
  """
  s, total = config.schedule, float(config.total_steps)
  peak = peak_learning_rate(config)
  warm_steps = float(s.warmup) * total
  if warm_steps > 0:
    w = max(1.0, warm_steps)
    warm = optax.linear_schedule(init_value=peak / w, end_value=peak, transition_steps=w - 1)
  else:
    warm = optax.constant_schedule(peak)
  if s.kind == "warmup_constant":
    return warm
  if s.kind == "warmup_cosine":
    cos = optax.cosine_decay_schedule(init_value=peak, decay_steps=max(total - warm_steps, 1e-9),
                                      alpha=float(s.final_lr_frac))
    return optax.join_schedules([warm, cos], [warm_steps])
  raise ValueError(f"config.schedule.kind: unknown {s.kind!r}")


def mask_center_schedule(config) -> optax.Schedule:
  """Masking Warmup centre mu by step: `center_start` until `warmup_start`, then linearly or
  along a half cosine to `center_end` at `warmup_end` (paper: 0 -> 1 over epochs 0..36 of
  48), `center_end` afterwards; a jump at warmup_start when warmup_end <= warmup_start."""
  m, total = config.masking, float(config.total_steps)
  start, end = float(m.center_start), float(m.center_end)
  begin, span = float(m.warmup_start) * total, float(m.warmup_end - m.warmup_start) * total
  if m.shape not in ("linear", "cosine"):
    raise ValueError(f"masking.shape must be 'linear' or 'cosine', got {m.shape!r}")
  if span <= 0:
    return optax.join_schedules([optax.constant_schedule(start), optax.constant_schedule(end)],
                                [begin])
  if m.shape == "linear":
    return optax.linear_schedule(init_value=start, end_value=end, transition_steps=span,
                                 transition_begin=begin)
  # end + (start - end) * (1 + cos(pi * frac)) / 2: a cosine decay of (start - end), shifted.
  cos = optax.cosine_decay_schedule(init_value=start - end, decay_steps=span, alpha=0.0)
  return optax.join_schedules([optax.constant_schedule(start), lambda n: end + cos(n)], [begin])


class TrainSchedule:
  """`schedule(step) -> {'lr': f32, 'mask_center': f32, 'progress': f32}` (jittable);
  `.lr` and `.mask_center` are the two optax schedules (same step count)."""

  def __init__(self, config):
    self.total_steps = int(config.total_steps)
    self.lr = lr_schedule(config)
    self.mask_center = mask_center_schedule(config)

  def progress(self, step):
    return jnp.asarray(step, jnp.float32) / float(self.total_steps)

  def __call__(self, step) -> dict:
    return dict(lr=jnp.asarray(self.lr(step), jnp.float32),
                mask_center=jnp.asarray(self.mask_center(step), jnp.float32),
                progress=self.progress(step))
