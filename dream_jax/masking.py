"""Masking for DREAM: random orders and mask ratios (the Masking Warmup centre is a schedule,
train/schedule.py).

Every function is pure and jittable; randomness comes from explicit `jax.random` keys (the
trainer folds the step into its 'mask' stream).

Grouping (a documented design choice). The official code draws ONE mask ratio per GPU
micro-batch of 64 and gates the losses per micro-batch. Here a group is a FIXED slice of the
global batch (`group_size` consecutive samples), independent of the device mesh, so a run
gives the same losses on 1 or 256 devices. Shapes stay static because masks are boolean
arrays over all L positions; the encoder then either drops tokens into a bucketed static
length or masks attention at full length (see models/dream.py for the cost of each).
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri


def random_orders(rng, batch: int, seq_len: int):
  """One random permutation of 0..L-1 per sample: [B, L] int32."""
  keys = jax.random.split(rng, batch)
  return jax.vmap(lambda k: jax.random.permutation(k, seq_len, independent=True))(keys).astype(
      jnp.int32)


def num_masked(ratio, seq_len: int):
  """ceil(L * r) as int32 (the reference's rule), for scalar or [B] ratios."""
  return jnp.ceil(jnp.asarray(ratio, jnp.float32) * seq_len).astype(jnp.int32)


def static_visible_count(cfg, seq_len: int) -> Optional[int]:
  """The visible count of EVERY sample when the config fixes it (kind 'fixed' or 'none'),
  else None. `num_masked`'s float32 rule, evaluated on the host: the encoder can then run
  at this static length and the diffusion loss at this many rows per sample, with no
  bucket switch (whose gradient keeps every branch's residuals and zero-fills the ones not
  taken)."""
  if cfg.kind == "none":
    return seq_len
  if cfg.kind != "fixed":
    return None
  masked = int(np.ceil(np.float32(cfg.fixed_ratio) * np.float32(seq_len)))
  return seq_len - masked


def mask_from_orders(orders, n_masked):
  """Masks the first n_masked[b] entries of each order row.

  Args:
    orders: [B, L] int32 permutations.
    n_masked: [B] int32 (or scalar).
  Returns:
    [B, L] bool, True = masked (dropped from the encoder, predicted by the head).
  """
  b, l = orders.shape
  rank = jnp.zeros((b, l), jnp.int32).at[jnp.arange(b)[:, None], orders].set(
      jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l)))
  return rank < jnp.broadcast_to(jnp.asarray(n_masked), (b,))[:, None]


def truncated_normal(rng, shape, mean, std, lo, hi):
  """Samples N(mean, std) truncated to [lo, hi] by inverse-CDF (exact, no rejection loop)."""
  a = ndtr((lo - mean) / std)
  b = ndtr((hi - mean) / std)
  u = jax.random.uniform(rng, shape, jnp.float32)
  p = a + u * (b - a)
  p = jnp.clip(p, 1e-7, 1 - 1e-7)
  return jnp.clip(mean + std * ndtri(p), lo, hi)


def truncated_normal_mean(mean, std, lo, hi):
  """Closed-form mean of the truncated normal (tests compare samples against it)."""
  alpha, beta = (lo - mean) / std, (hi - mean) / std
  phi = lambda x: jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
  z = ndtr(beta) - ndtr(alpha)
  return mean + std * (phi(alpha) - phi(beta)) / z


def sample_ratios(rng, num: int, center, cfg):
  """Draws `num` mask ratios from the configured distribution: [num] float32."""
  if cfg.kind == "truncnorm":
    return truncated_normal(rng, (num,), center, cfg.std, cfg.min, cfg.max)
  if cfg.kind == "uniform":
    return jax.random.uniform(rng, (num,), jnp.float32, cfg.min, cfg.max)
  if cfg.kind == "fixed":
    return jnp.full((num,), cfg.fixed_ratio, jnp.float32)
  if cfg.kind == "none":
    return jnp.zeros((num,), jnp.float32)
  raise ValueError(f"masking.kind: unknown {cfg.kind!r}")


def sample_masks(rng, batch: int, seq_len: int, center, cfg):
  """Per-group ratios and per-sample masks for one global batch.

  Returns dict:
    ratio_group [G] float32, G = batch // group_size;
    ratio [B] float32 (the group's ratio for each sample);
    orders [B, L] int32; mask [B, L] bool (True = masked).
  """
  if batch % cfg.group_size:
    raise ValueError(f"batch {batch} not divisible by masking.group_size={cfg.group_size}")
  groups = batch // cfg.group_size
  k_ratio, k_order = jax.random.split(rng)
  ratio_group = sample_ratios(k_ratio, groups, center, cfg)
  ratio = jnp.repeat(ratio_group, cfg.group_size)
  orders = random_orders(k_order, batch, seq_len)
  mask = mask_from_orders(orders, num_masked(ratio, seq_len))
  return dict(ratio_group=ratio_group, ratio=ratio, orders=orders, mask=mask)
