"""Images <-> DREAM image tokens, for the three tokenizer kinds.

  'vae'      (paper) 256x256 RGB -> frozen SD KL-VAE posterior (sampled in training, scaled
             by 0.18215) -> 32x32x4 latent -> 2x2 patches -> 256 tokens of dim 16.
  'identity' (tiny runs) pixels in [-1, 1] cut directly into p x p patches (dim 3*p*p),
             as (pixel - tokenizer.pixel_shift) * tokenizer.pixel_scale: the identity
             counterpart of a VAE's shift and scaling factors (0 and 1 unless a config sets
             them).
  'autoencoder' (small runs, the paper-faithful analogue of 'vae') a small frozen
             autoencoder fitted to the run's data (pretrained/autoencoder.py: PCA of
             q x q patches, or a tiny KL-VAE): S x S RGB -> latents normalised by the
             MEASURED shift and scale -> (S/s)^2/p^2 tokens of dim c*p*p.

`ImageTokens.to_tokens(frozen, batch, rng)` runs INSIDE the jitted step (docs/DESIGN.md section 6:
pipelines only decode/crop/flip; VAE sampling happens on device). It accepts either raw
`image` [B,H,W,3] in [-1,1] or cached `latent_moments` [B,2,h,w,c] (mean, logvar).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dream_jax.models.patchify import patchify, token_layout, unpatchify


class ImageTokens:
  """Tokenizer of a config: `to_tokens`, `from_tokens`, and its frozen parameters."""

  def __init__(self, config):
    self.cfg = config.tokenizer
    self.kind = self.cfg.kind
    d = token_layout(self.cfg, config.data.image_size)
    self.patch, self.grid, self.channels = self.cfg.patch_size, d["grid"], d["channels"]
    self.vae = None
    self.autoencoder = None
    if self.kind == "vae":
      from dream_jax.pretrained.frozen import ImageTokenizerVAE  # frozen port, lazily
      self.vae = ImageTokenizerVAE(self.cfg)
    elif self.kind == "autoencoder":
      from dream_jax.pretrained import autoencoder
      self.autoencoder = autoencoder.ImageAutoencoder(self.cfg)
      self._ae_path = autoencoder.resolve_path(config)[0]

  def init_frozen(self, rng=None):
    """Frozen parameters ({} for identity): loaded from tokenizer.vae_path, or tiny random
    weights when tokenizer.tiny_random (CPU smoke runs); for 'autoencoder' the trained
    directory (tokenizer.path or the cache; `dream_jax.train.tokenizer.ensure` trains it
    first when missing)."""
    if self.autoencoder is not None:
      from dream_jax.pretrained import autoencoder
      return autoencoder.load(self._ae_path, self.autoencoder)[0]
    if self.vae is None:
      return {}
    if self.cfg.tiny_random:
      return self.vae.init_params(rng if rng is not None else jax.random.key(0))
    return self.vae.load_params()

  def latents(self, frozen, batch, rng, sample: bool = True):
    """Scaled latents [B,h,w,c] (or pixels for identity)."""
    if self.kind == "identity":
      pixels = batch["image"].astype(jnp.float32)
      return (pixels - self.cfg.pixel_shift) * self.cfg.pixel_scale
    if self.kind == "autoencoder":
      return self.autoencoder.latents(frozen, batch["image"].astype(jnp.float32), rng, sample)
    if "latent_moments" in batch:
      moments = batch["latent_moments"].astype(jnp.float32)
    else:
      moments = self.vae.encode_moments(frozen, batch["image"])
    if sample and self.cfg.sample_posterior:
      return self.vae.sample_latents(moments, rng)
    return moments[:, 0] * self.vae.scale_factor

  def to_tokens(self, frozen, batch, rng, sample: bool = True):
    """[B, L, C] float32 tokens, gradient-stopped (the tokenizer is frozen)."""
    return jax.lax.stop_gradient(patchify(self.latents(frozen, batch, rng, sample), self.patch))

  def from_tokens(self, frozen, tokens):
    """Tokens [B, L, C] -> images [B, H, W, 3] float32 in [-1, 1] (clipped)."""
    x = unpatchify(tokens, self.patch, self.grid, self.channels)
    if self.kind == "vae":
      x = self.vae.decode_latents(frozen, x)
    elif self.kind == "autoencoder":
      x = self.autoencoder.decode_latents(frozen, x)
    else:
      x = x / self.cfg.pixel_scale + self.cfg.pixel_shift
    return jnp.clip(x, -1.0, 1.0)
