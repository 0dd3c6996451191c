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


def token_layout(tokenizer_cfg, image_size: int) -> dict:
  """Sizes implied by the image tokenizer section (`config.tokenizer`) at `image_size` pixels
  (`config.data.image_size`): grid, seq_len (number of tokens L), token_dim (C),
  latent_size and channels."""
  t = tokenizer_cfg
  latent = t.kind in ("vae", "autoencoder")
  stride = t.vae_stride if latent else 1
  channels = t.latent_channels if latent else 3
  if image_size % (stride * t.patch_size):
    raise ValueError(f"data.image_size={image_size} must be divisible by "
                     f"tokenizer.vae_stride*patch_size={stride * t.patch_size}")
  grid = image_size // stride // t.patch_size
  return dict(grid=grid, seq_len=grid * grid, token_dim=channels * t.patch_size ** 2,
              latent_size=image_size // stride, channels=channels)
