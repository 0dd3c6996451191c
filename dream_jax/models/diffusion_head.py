"""The per-token diffusion MLP of MAR's DiffLoss (`SimpleMLPAdaLN`), in Flax Linen.

x_t [N, C] and the token's condition z [N, Dz] -> [N, 2C]: eps in channels 0..C-1 and the
learned variance interpolation values in C..2C-1 (see `dream_jax.diffusion.gaussian`).

    h = input_proj(x_t)
    y = time_embed(sinusoid(t)) + cond_embed(z)
    for each block:  (shift, scale, gate) = Linear(SiLU(y)).chunk(3)
                     h = h + gate * MLP(LN(h) * (1 + scale) + shift)      (LN eps 1e-6, affine)
    (shift, scale) = Linear(SiLU(y)).chunk(2);  out = Linear(LN(h) * (1 + scale) + shift)
                                                                  (LN eps 1e-6, no affine)

Initialisation as MAR: xavier-uniform Linears with zero bias, normal(0.02) for the two time
embedding Linears, and zeros for every adaLN modulation Linear and the final Linear (so a fresh
head outputs exactly 0 and each block starts as the identity).

Parameter names mirror the PyTorch module names ('.' -> '_'), so `head_params_from_torch` is a
rename plus a transpose of Linear weights ([out, in] -> Dense kernel [in, out]).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.models.layers import constrain_batch

Array = jax.Array
Dtype = Any

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def timestep_frequencies(dim: int = 256, max_period: float = 10000.0) -> np.ndarray:
  """The dim // 2 frequencies exp(-ln(max_period) * i / (dim // 2)), [dim // 2] float32.

  The exponent is formed in float32 exactly as the reference (float32 arange, multiply, divide);
  the exp is then taken in float64 and rounded once, so the table is the correctly rounded one
  and identical on every backend. Torch's float32 exp is off by 1 ulp on a few entries (the
  fixture `timestep_frequencies` stores torch's table); the effect downstream is < 1e-6
  relative.
  """
  half = dim // 2
  arg = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
         / np.float32(half))
  return np.exp(arg.astype(np.float64)).astype(np.float32)


def timestep_embedding(t: Array, dim: int = 256, max_period: float = 10000.0,
                       freqs: Optional[Array] = None) -> Array:
  """Sinusoidal embedding of (original) timesteps, always float32.

  Args:
    t: [N] int or float timesteps.
    dim: embedding size; the first dim // 2 entries are cos, the next dim // 2 sin
      (a trailing zero is appended when dim is odd).
    freqs: optional [dim // 2] float32 frequency table (default `timestep_frequencies`).
  Returns:
    [N, dim] float32.
  """
  if freqs is None:
    freqs = timestep_frequencies(dim, max_period)
  args = t.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def _modulate(x, shift, scale):
  return x * (1 + scale) + shift


def _dense(features: int, dtype: Dtype, name: str, precision=None, kernel_init=_xavier):
  """A Linear whose input and output rows stay split along N like the samples they come
  from (`constrain_batch`; a no-op without a mesh). The head's kernels are FSDP-sharded on
  their output features; unconstrained, the partitioner computed some outputs (and their
  cotangents) feature-split and moved them back with all-to-alls (12-16 in B/16's backward,
  docs/scaling.md). Constrained, FSDP gathers the kernel and rows never move."""
  dense = nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, precision=precision,
                   kernel_init=kernel_init, bias_init=_zeros, name=name)
  return lambda x: constrain_batch(dense(constrain_batch(x)))


def _layer_norm(affine: bool, dtype: Dtype, name: str):
  # use_fast_variance=False: E[(x - mean)^2], as torch, rather than E[x^2] - mean^2.
  return nn.LayerNorm(epsilon=1e-6, use_bias=affine, use_scale=affine, dtype=dtype,
                      param_dtype=jnp.float32, use_fast_variance=False, name=name)


class ResBlock(nn.Module):
  """AdaLN residual MLP block. x, y: [N, W] -> [N, W]."""
  width: int
  dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, y: Array, mod: Optional[Array] = None) -> Array:
    """mod: this block's adaLN output [N, 3W] when the caller computed it (fused)."""
    if mod is None:
      mod = _dense(3 * self.width, self.dtype, "adaLN_modulation_1", self.precision,
                   kernel_init=_zeros)(nn.silu(y))
    shift, scale, gate = jnp.split(mod, 3, axis=-1)
    h = _modulate(_layer_norm(True, self.dtype, "in_ln")(x), shift, scale)
    h = _dense(self.width, self.dtype, "mlp_0", self.precision)(h)
    h = _dense(self.width, self.dtype, "mlp_2", self.precision)(nn.silu(h))
    return x + gate * h


class FinalLayer(nn.Module):
  """Non-affine LN modulated by (shift, scale) from y, then Linear to out_channels."""
  width: int
  out_channels: int
  dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, y: Array, mod: Optional[Array] = None) -> Array:
    """mod: the adaLN output [N, 2W] when the caller computed it (fused)."""
    if mod is None:
      mod = _dense(2 * self.width, self.dtype, "adaLN_modulation_1", self.precision,
                   kernel_init=_zeros)(nn.silu(y))
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = _modulate(_layer_norm(False, self.dtype, "norm_final")(x), shift, scale)
    return _dense(self.out_channels, self.dtype, "linear", self.precision,
                  kernel_init=_zeros)(h)


class SimpleMLPAdaLN(nn.Module):
  """MAR's diffusion MLP.

  Attributes:
    in_channels: token dim C (16 for SD-VAE latents with 2x2 patches).
    width: hidden width W (MAR `diffloss_w`; config.model.diff_width, 1024 in the paper).
    depth: number of residual blocks (MAR `diffloss_d`; config.model.diff_depth, 3).
    out_channels: 2C by default (eps and variance values).
    frequency_embedding_size: sinusoid size (256).
    dtype: compute dtype of the Linears/LNs; the sinusoid is always float32, params float32,
      and the output is returned in float32.
    precision: matmul precision passed to every Dense (None = the JAX default).
  """
  in_channels: int
  width: int
  depth: int
  out_channels: Optional[int] = None
  frequency_embedding_size: int = 256
  dtype: Dtype = jnp.float32
  precision: Any = None

  @property
  def _out_channels(self) -> int:
    return self.out_channels or 2 * self.in_channels

  @nn.compact
  def __call__(self, x: Optional[Array], t: Optional[Array], z: Array, *,
               z_embedded: bool = False) -> Array:
    """x: [N, C] float32 noisy tokens; t: [N] int32 ORIGINAL timesteps (0..999), or one
    timestep shared by every row (shape [] or [1]); z: [N, Dz] condition.

    Returns [N, out_channels] float32. Two forms serve the sampling chain, which runs the
    head on the same z for every diffusion step and on one timestep per step: with x=None
    it returns only cond_embed(z) [N, W]; with z_embedded=True, z is that output and the
    Linear is not rerun. A shared t has its time embedding computed on one row [1, W] and
    broadcast. Every form computes the same values row for row.

    In the z_embedded form (the chain's: few rows, many evaluations) the adaLN modulations
    of every block and of the final layer, all Linears of the same SiLU(y), run as ONE
    matmul on their concatenated kernels ([W, 3W*depth + 2W]; XLA hoists the concatenation
    out of the chain's loop). They are ~65% of the head's FLOPs, and on few rows one wide
    matmul runs much closer to the machine's matmul rate than depth + 1 narrow ones. The
    training form keeps one Linear per block: its kernels are FSDP-sharded on their output
    features, and a concatenation across them would make the partitioner move shards.
    """
    c_emb = z if z_embedded else _dense(self.width, self.dtype, "cond_embed", self.precision)(z)
    if x is None:
      return c_emb
    normal02 = nn.initializers.normal(0.02)
    h = _dense(self.width, self.dtype, "input_proj", self.precision)(x)
    t_freq = timestep_embedding(jnp.reshape(t, (-1,)), self.frequency_embedding_size)
    t_emb = _dense(self.width, self.dtype, "time_embed_0", self.precision,
                   kernel_init=normal02)(t_freq)
    t_emb = _dense(self.width, self.dtype, "time_embed_2", self.precision,
                   kernel_init=normal02)(nn.silu(t_emb))
    y = t_emb + c_emb                                           # [N or 1, W] + [N, W]
    mods = [None] * (self.depth + 1)
    if z_embedded and not self.is_initializing():
      mods = self._fused_modulations(y)
    for i in range(self.depth):
      h = ResBlock(self.width, self.dtype, self.precision, name=f"res_blocks_{i}")(h, y,
                                                                                  mods[i])
    out = FinalLayer(self.width, self._out_channels, self.dtype, self.precision,
                     name="final_layer")(h, y, mods[-1])
    return out.astype(jnp.float32)

  def _fused_modulations(self, y: Array) -> list:
    """Every adaLN Linear of SiLU(y) [N, W] in one matmul, split back per layer:
    depth x [N, 3W] (blocks), then [N, 2W] (final layer). As nn.Dense: inputs, kernel and
    bias in `dtype`, then x @ kernel + bias."""
    params = self.variables["params"]
    names = [f"res_blocks_{i}" for i in range(self.depth)] + ["final_layer"]
    layers = [params[n]["adaLN_modulation_1"] for n in names]
    kernel = jnp.concatenate([p["kernel"] for p in layers], axis=1).astype(self.dtype)
    bias = jnp.concatenate([p["bias"] for p in layers]).astype(self.dtype)
    x = constrain_batch(nn.silu(y).astype(self.dtype))
    out = constrain_batch(jnp.dot(x, kernel, precision=self.precision) + bias)
    cuts = np.cumsum([p["kernel"].shape[1] for p in layers])[:-1]
    return jnp.split(out, cuts, axis=-1)

  def forward_with_cfg(self, x: Array, t: Array, z: Array, cfg_scale) -> Array:
    """Classifier-free guided head output (MAR's forward_with_cfg).

    x: [2N, C] (only the first half is read; both halves are run on it); t: [2N];
    z: [2N, Dz] = cond rows then uncond rows; cfg_scale: scalar (may be traced).
    Returns [2N, 2C] float32: the guided eps uncond + s * (cond - uncond) in BOTH halves, and
    each half's own (unguided) variance values.
    """
    return apply_with_cfg(self.__call__, x, t, z, cfg_scale, self.in_channels)


def guide_eps(model_out: Array, cfg_scale, in_channels: int) -> Array:
  """CFG on a doubled-batch head output [2N, 2C] (cond rows, then uncond rows).

  Writes uncond + s * (cond - uncond) into the eps channels of both halves and leaves the
  variance values of each half unguided. Returns [2N, 2C].
  """
  eps, rest = model_out[:, :in_channels], model_out[:, in_channels:]
  cond_eps, uncond_eps = jnp.split(eps, 2, axis=0)
  half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
  return jnp.concatenate([jnp.concatenate([half_eps, half_eps], axis=0), rest], axis=-1)


def apply_with_cfg(head_apply, x: Array, t: Array, z: Array, cfg_scale,
                   in_channels: int) -> Array:
  """`head_apply(x, t, z)` with CFG: both halves run on x's first half; see `guide_eps`."""
  half = x[: x.shape[0] // 2]
  model_out = head_apply(jnp.concatenate([half, half], axis=0), t, z)
  return guide_eps(model_out, cfg_scale, in_channels)


def head_params_from_torch(sd: dict, prefix: str = "diffloss.net.") -> dict:
  """Maps an official state_dict (numpy arrays) to the `SimpleMLPAdaLN` param tree.

  Linear `weight` [out, in] -> Dense `kernel` [in, out]; LayerNorm `weight` -> `scale`. Torch
  module paths map to Flax names by replacing '.' between a module and its index with '_'
  (time_embed.mlp.0 -> time_embed_0, res_blocks.1.mlp.2 -> res_blocks_1/mlp_2, ...). Every
  key under `prefix` must be consumed.

  Returns:
    {'params': {...}} float32 numpy arrays, ready for `SimpleMLPAdaLN.apply`.
  """
  keys = [k for k in sd if k.startswith(prefix)]
  if not keys:
    raise KeyError(f"no parameter starts with {prefix!r}")
  params: dict = {}
  for key in keys:
    parts = key[len(prefix):].split(".")
    leaf = parts[-1]
    mod = ".".join(parts[:-1])
    if mod.startswith("time_embed.mlp."):
      path = ["time_embed_" + mod.split(".")[-1]]
    elif mod.startswith("res_blocks."):
      _, idx, *rest = mod.split(".")
      path = [f"res_blocks_{idx}", "_".join(rest)]
    elif mod.startswith("final_layer."):
      path = ["final_layer", "_".join(mod.split(".")[1:])]
    elif mod in ("cond_embed", "input_proj"):
      path = [mod]
    else:
      raise KeyError(f"unexpected diffusion-head parameter {key}")
    value = np.asarray(sd[key], dtype=np.float32)
    is_ln = path[-1] in ("in_ln", "norm_final")
    if leaf == "weight":
      name, value = ("scale", value) if is_ln else ("kernel", value.T)
    elif leaf == "bias":
      name = "bias"
    else:
      raise KeyError(f"unexpected diffusion-head parameter {key}")
    node = params
    for p in path:
      node = node.setdefault(p, {})
    node[name] = np.ascontiguousarray(value)
  return {"params": params}
