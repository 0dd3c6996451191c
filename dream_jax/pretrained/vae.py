"""Stable-Diffusion KL-VAE (diffusers `AutoencoderKL`) in Flax Linen, NHWC.

Architecture (diffusers 0.42 `AutoencoderKL` with `DownEncoderBlock2D` / `UpDecoderBlock2D`):
  encoder: conv_in 3x3 -> per level `layers_per_block` ResNet blocks (+ a stride-2
    downsampler, asymmetric pad (0,1) then 3x3 conv, on all but the last level) -> mid block
    (ResNet, single-head spatial self-attention, ResNet) -> GroupNorm, SiLU, conv_out to
    2*latent_channels -> quant_conv 1x1. The channels split into mean and log-variance;
    log-variance is clamped to [-30, 20] (diffusers `DiagonalGaussianDistribution`).
  decoder: post_quant_conv 1x1 -> conv_in -> mid block -> per level (channels reversed)
    `layers_per_block + 1` ResNet blocks (+ nearest x2 upsample and 3x3 conv on all but the
    last) -> GroupNorm, SiLU, conv_out.
  ResNet block: GroupNorm, SiLU, conv 3x3, GroupNorm, SiLU, conv 3x3, + shortcut (1x1 conv when
    channels change). Every GroupNorm has eps 1e-6 and `norm_num_groups` groups.
Module names mirror the PyTorch ones (`down_blocks_0/resnets_1/conv1`), so released
`diffusion_pytorch_model.safetensors` files map onto the param tree mechanically
(see `loading.torch_to_flax`).

The stride is 2**(levels-1): sd-vae-ft-ema has 4 levels (128, 256, 512, 512) -> stride 8,
4 latent channels, latents multiplied by `scaling_factor` = 0.18215 before use.

`dtype` is the compute dtype (bf16 option); params stay float32; norms reduce in float32 and
attention softmax runs in float32.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dream_jax.pretrained import loading


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The subset of diffusers' AutoencoderKL config that defines the architecture."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  @property
  def stride(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_diffusers(cls, cfg: dict) -> "VAEConfig":
    """From a diffusers `config.json` dict; rejects variants we do not implement."""
    levels = len(cfg.get("block_out_channels", (64,)))
    down = tuple(cfg.get("down_block_types", ("DownEncoderBlock2D",) * levels))
    up = tuple(cfg.get("up_block_types", ("UpDecoderBlock2D",) * levels))
    if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"}:
      raise ValueError(f"unsupported VAE block types {down} / {up}")
    if cfg.get("act_fn", "silu") != "silu":
      raise ValueError(f"unsupported VAE act_fn {cfg['act_fn']!r}")
    if cfg.get("shift_factor") not in (None, 0, 0.0):
      raise ValueError("VAEs with shift_factor (SD3/Flux) are not supported")
    return cls(
        in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
        block_out_channels=tuple(cfg.get("block_out_channels", (64,))),
        layers_per_block=cfg.get("layers_per_block", 1),
        latent_channels=cfg.get("latent_channels", 4),
        norm_num_groups=cfg.get("norm_num_groups", 32),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        use_quant_conv=cfg.get("use_quant_conv", True),
        use_post_quant_conv=cfg.get("use_post_quant_conv", True),
        mid_block_add_attention=cfg.get("mid_block_add_attention", True))

  def to_diffusers(self) -> dict:
    n = len(self.block_out_channels)
    d = dataclasses.asdict(self)
    d["block_out_channels"] = list(self.block_out_channels)
    d.update(_class_name="AutoencoderKL", down_block_types=["DownEncoderBlock2D"] * n,
             up_block_types=["UpDecoderBlock2D"] * n, act_fn="silu")
    return d


# stabilityai/sd-vae-ft-ema (and ft-mse, and SD 1.x's VAE): 83.7M params.
SD_VAE_CONFIG = VAEConfig()
# runlocal stand-in: same architecture (4 levels -> stride 8, 4 latent channels), 0.26M params.
TINY_VAE_CONFIG = VAEConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1,
                            norm_num_groups=8)

Dtype = Any


def _conv(features, kernel, name, dtype, padding=None, strides=1):
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


def _group_norm(groups, name, dtype):
  # Two-pass variance (torch computes it that way); statistics in float32.
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
  """diffusers ResnetBlock2D without time embedding: [B,H,W,Cin] -> [B,H,W,Cout]."""
  out_channels: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.silu(_group_norm(self.groups, "norm1", self.dtype)(x))
    h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
    h = nn.silu(_group_norm(self.groups, "norm2", self.dtype)(h))
    h = _conv(self.out_channels, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
    return x + h


class SpatialAttention(nn.Module):
  """diffusers `Attention` as used in the VAE mid block: one head over H*W positions,
  GroupNorm first, residual added. [B,H,W,C] -> [B,H,W,C]."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = _group_norm(self.groups, "group_norm", self.dtype)(x).reshape(b, h * w, c)
    dense = functools.partial(nn.Dense, c, dtype=self.dtype, param_dtype=jnp.float32)
    q, k, v = dense(name="to_q")(y), dense(name="to_k")(y), dense(name="to_v")(y)
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (c ** -0.5)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bqk,bkc->bqc", probs, v)
    y = dense(name="to_out_0")(y).reshape(b, h, w, c)
    return x + y


class MidBlock(nn.Module):
  channels: int
  groups: int
  add_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_0")(x)
    if self.add_attention:
      x = SpatialAttention(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
  """Pad right/bottom by one, 3x3 conv with stride 2 (diffusers Downsample2D, padding=0)."""
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv(self.channels, 3, "conv", self.dtype, padding=((0, 1), (0, 1)), strides=2)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then 3x3 conv (diffusers Upsample2D)."""
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, 3, "conv", self.dtype)(x)


class DownBlock(nn.Module):
  channels: int
  num_layers: int
  groups: int
  add_downsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = ResnetBlock(self.channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.add_downsample:
      x = Downsample(self.channels, self.dtype, name="downsamplers_0")(x)
    return x


class UpBlock(nn.Module):
  channels: int
  num_layers: int
  groups: int
  add_upsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = ResnetBlock(self.channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.add_upsample:
      x = Upsample(self.channels, self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """[B,H,W,3] -> [B,H/s,W/s,2*latent_channels] (before quant_conv)."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    chans, g = cfg.block_out_channels, cfg.norm_num_groups
    x = _conv(chans[0], 3, "conv_in", self.dtype)(x)
    for i, c in enumerate(chans):
      x = DownBlock(c, cfg.layers_per_block, g, i < len(chans) - 1, self.dtype,
                    name=f"down_blocks_{i}")(x)
    x = MidBlock(chans[-1], g, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
    x = nn.silu(_group_norm(g, "conv_norm_out", self.dtype)(x))
    return _conv(2 * cfg.latent_channels, 3, "conv_out", self.dtype)(x)


class Decoder(nn.Module):
  """[B,h,w,latent_channels] -> [B,h*s,w*s,3] (after post_quant_conv)."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    chans, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
    x = _conv(chans[0], 3, "conv_in", self.dtype)(z)
    x = MidBlock(chans[0], g, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
    for i, c in enumerate(chans):
      x = UpBlock(c, cfg.layers_per_block + 1, g, i < len(chans) - 1, self.dtype,
                  name=f"up_blocks_{i}")(x)
    x = nn.silu(_group_norm(g, "conv_norm_out", self.dtype)(x))
    return _conv(cfg.out_channels, 3, "conv_out", self.dtype)(x)


class AutoencoderKL(nn.Module):
  """Flax AutoencoderKL. Methods: `encode` (moments) and `decode`; `__call__` runs both
  (posterior mean -> decoder), used only to create params."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg, self.dtype)
    self.decoder = Decoder(cfg, self.dtype)
    if cfg.use_quant_conv:
      self.quant_conv = _conv(2 * cfg.latent_channels, 1, None, self.dtype)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = _conv(cfg.latent_channels, 1, None, self.dtype)

  def encode(self, images):
    """images [B,H,W,3] in [-1,1] -> moments [B,2,h,w,c] float32 (mean, clamped logvar)."""
    h = self.encoder(images.astype(self.dtype))
    if self.config.use_quant_conv:
      h = self.quant_conv(h)
    h = h.astype(jnp.float32)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return jnp.stack([mean, jnp.clip(logvar, -30.0, 20.0)], axis=1)

  def decode(self, latents):
    """latents [B,h,w,c] (UNscaled) -> images [B,H,W,3] float32, nominally in [-1,1]."""
    z = latents.astype(self.dtype)
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, images):
    return self.decode(self.encode(images)[:, 0])


def sample_posterior(moments, rng, scale_factor: float | None = None):
  """moments [B,2,h,w,c] -> mean + exp(logvar/2) * N(0,1), times `scale_factor` if given.

  Matches diffusers `DiagonalGaussianDistribution.sample` (logvar already clamped).
  """
  mean, logvar = moments[:, 0], moments[:, 1]
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
  return z if scale_factor is None else z * scale_factor


VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
VAE_HINT = ("Use a diffusers-layout directory of the SD KL-VAE (config.json + "
            "diffusion_pytorch_model.safetensors or .bin), e.g. the Hugging Face repo "
            "'stabilityai/sd-vae-ft-ema' fetched on a machine with network access "
            "(`huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir DIR`), or a "
            "directory written by `python -m dream_jax.tools.convert_weights --kind=vae`.")


def _legacy_attention_names(key: str) -> str:
  # Checkpoints saved by diffusers < 0.14 name the mid-block attention query/key/value/proj_attn.
  for old, new in ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."),
                   (".proj_attn.", ".to_out.0.")):
    key = key.replace(old, new)
  return key


def read_vae_dir(directory: str, config_key: str = "config.tokenizer.vae_path"):
  """(VAEConfig, params) from a diffusers directory or a converted one (params.msgpack)."""
  if loading.is_converted_dir(directory):
    cfg = VAEConfig.from_diffusers(loading.read_json(os.path.join(directory, "config.json")))
    return cfg, loading.load_converted_params(directory)
  weights = loading.find_weights_file(directory, VAE_WEIGHT_FILES, what="SD-VAE weights",
                                      hint=VAE_HINT, config_key=config_key)
  cfg_path = loading.find_weights_file(directory, ("config.json",), what="SD-VAE config",
                                       hint=VAE_HINT, config_key=config_key)
  cfg = VAEConfig.from_diffusers(loading.read_json(cfg_path))
  return cfg, convert_vae_state(loading.load_state_dict(weights), cfg)


def vae_param_shapes(cfg: VAEConfig, image_size: int = 64):
  """Param ShapeDtypeStructs of the architecture (no FLOPs, no memory)."""
  size = max(image_size, cfg.stride)
  x = jax.ShapeDtypeStruct((1, size, size, cfg.in_channels), jnp.float32)
  return jax.eval_shape(lambda x: AutoencoderKL(cfg).init(jax.random.key(0), x), x)["params"]


def convert_vae_state(state, cfg: VAEConfig) -> dict:
  """diffusers AutoencoderKL state dict -> Flax params (float32 numpy)."""
  return loading.torch_to_flax(state, vae_param_shapes(cfg), rename=_legacy_attention_names)


class SDVAE:
  """Functional front end: jitted `encode`, `sample`, `decode` with explicit params.

  encode(params, images [B,H,W,3] in [-1,1]) -> moments [B,2,h,w,c] float32
  sample(moments, rng) -> latents * scale_factor [B,h,w,c] float32
  decode(params, latents [B,h,w,c] UNscaled) -> images [B,H,W,3] float32
  """

  def __init__(self, config: VAEConfig = SD_VAE_CONFIG, dtype: Dtype = jnp.float32,
               scale_factor: float | None = None):
    self.config = config
    self.dtype = jnp.dtype(dtype)
    self.scale_factor = float(config.scaling_factor if scale_factor is None else scale_factor)
    self.module = AutoencoderKL(config, self.dtype)
    self.encode = jax.jit(lambda p, x: self.module.apply({"params": p}, x,
                                                         method=AutoencoderKL.encode))
    self.decode = jax.jit(lambda p, z: self.module.apply({"params": p}, z,
                                                         method=AutoencoderKL.decode))

  def init_params(self, rng, image_size: int = 64):
    size = max(image_size, self.config.stride)
    x = jnp.zeros((1, size, size, self.config.in_channels), jnp.float32)
    return jax.jit(AutoencoderKL(self.config).init)(rng, x)["params"]

  def sample(self, moments, rng):
    return sample_posterior(moments, rng, self.scale_factor)

  def cast_params(self, params):
    """Params in the compute dtype (halves memory for bf16 inference)."""
    return jax.tree.map(lambda a: jnp.asarray(a, self.dtype), params)
