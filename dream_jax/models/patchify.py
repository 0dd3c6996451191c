"""Latent/pixel grids <-> token sequences (the official `patchify`/`unpatchify`).

Token index = row * grid + col on the grid of p x p patches; inside a token the feature index
is channel * p * p + dy * p + dx (channel is the slowest-varying), exactly as the reference
so converted weights see the same layout.
"""
from __future__ import annotations

import jax.numpy as jnp


def patchify(x, p: int):
  """[B, H, W, C] (channels last) -> [B, (H/p)*(W/p), C*p*p]."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4))  # b, gh, gw, c, dy, dx
  return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens, p: int, grid: int, channels: int):
  """[B, grid*grid, C*p*p] -> [B, grid*p, grid*p, C]; exact inverse of `patchify`."""
  b = tokens.shape[0]
  x = tokens.reshape(b, grid, grid, channels, p, p)
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))  # b, gh, dy, gw, dx, c
  return x.reshape(b, grid * p, grid * p, channels)
