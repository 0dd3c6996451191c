"""Transformer building blocks shared by the DREAM encoder, decoder, aligner and text tower.

Numerics follow the official PyTorch release (timm ViT blocks, open_clip text blocks), because
Flax defaults differ: GELU is the exact erf form, Linear layers are xavier-uniform with zero
bias, LayerNorm eps is passed explicitly (1e-6 in ViT-style blocks, 1e-5 in the CLIP tower).

Attention is written out (not `jax.nn.dot_product_attention`) because the reference applies
dropout to the attention probabilities, and because the key mask is how the two encoder paths
(token dropping and full-length masking) are made to agree.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def gelu(x):
  """Exact (erf) GELU, as torch.nn.GELU(): x * (1 + erf(x / sqrt 2)) / 2, the formula torch
  uses (Flax's nn.gelu defaults to tanh). Why not jax.nn.gelu(approximate=False): it goes
  through erfc, which XLA:CPU expands into exp + selects in three passes over the [N, mlp]
  activations; erf is one rational polynomial in one fused pass (the MLP GELUs were the
  largest elementwise cost of the anchor train step)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)).astype(x.dtype))


class Dense(nn.Dense):
  """nn.Dense that runs its matmul on rows flattened to 2-D: [..., D] -> [N, D] -> [..., F].

  Same parameters and result as nn.Dense. Why: XLA:CPU compiles the backward of a dense
  layer on [B, L, D] activations (a weight gradient contracting two dims, fused with the
  activation's derivative) about 2x slower than on [N, D] rows (benchmarks/train_step.py).
  """

  @nn.compact
  def __call__(self, inputs):
    lead = inputs.shape[:-1]
    y = super().__call__(inputs.reshape((-1, inputs.shape[-1])))
    return y.reshape(lead + (y.shape[-1],))


def dense(features: int, dtype: Dtype, name: Optional[str] = None, use_bias: bool = True,
          kernel_init=xavier) -> nn.Dense:
  return Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
               kernel_init=kernel_init, bias_init=zeros, name=name)


def layer_norm(eps: float, dtype: Dtype, name: Optional[str] = None, affine: bool = True):
  # use_fast_variance=False: E[(x-mean)^2] like torch, not E[x^2]-mean^2 (parity, bf16 safety).
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_bias=affine,
                      use_scale=affine, use_fast_variance=False, name=name)


def attention(q, k, v, key_mask=None, causal=False, dropout=None):
  """Scaled dot-product attention with softmax in float32.

  Args:
    q: [B, Lq, H, Dh]; k, v: [B, Lk, H, Dh].
    key_mask: optional [B, Lk] bool, True where a key may be attended to.
    causal: lower-triangular mask (CLIP text tower).
    dropout: optional callable applied to the attention probabilities.
  Returns:
    [B, Lq, H, Dh] in q's dtype.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, -1e30)
  if causal:
    lq, lk = logits.shape[-2:]
    tri = jnp.tril(jnp.ones((lq, lk), bool))
    logits = jnp.where(tri, logits, -1e30)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class Dropout(nn.Dropout):
  """nn.Dropout with its keep-mask computed behind an optimization barrier.

  Same rng stream (`make_rng('dropout')` under the same auto-name `Dropout_<i>`, the class
  name being `Dropout`), same mask and same result as nn.Dropout: only where XLA may compute
  the mask changes. Why: without the barrier XLA fuses the threefry bit generation into the
  mask's consumer. For the attention probabilities that consumer is the p.v matmul, and
  XLA:TPU then spends 17-34 s lowering each such fusion, with retries; computed apart, the
  mask is one cheap loop fusion and the B/16 train step at 32 chips compiles 15% faster
  (docs/scaling.md). At run time the mask is one byte per element written and read once.
  """

  def __call__(self, inputs, deterministic: Optional[bool] = None, rng=None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:                  # as nn.Dropout: no 0/0 in the gradient
      return jnp.zeros_like(inputs)
    keep = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    mask = jax.lax.optimization_barrier(jax.random.bernoulli(rng, p=keep, shape=shape))
    mask = jnp.broadcast_to(mask, inputs.shape)
    return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


class SelfAttention(nn.Module):
  """timm `Attention`: fused qkv (q | k | v, heads of consecutive features), proj, dropouts."""
  width: int
  heads: int
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask=None, causal=False, *, deterministic: bool = True,
               queries=None):
    """x [B, L, D] -> [B, L, D]; with `queries` ([B, n] int32 row indices) only those rows
    attend (keys and values are still every row) and the output is [B, n, D]."""
    b, l, _ = x.shape
    qkv = dense(3 * self.width, self.dtype, "qkv")(x)
    qkv = qkv.reshape(b, l, 3, self.heads, self.width // self.heads)
    q = qkv[:, :, 0]
    if queries is not None:
      q = jnp.take_along_axis(q, queries[:, :, None, None], axis=1)
      l = queries.shape[1]
    drop = None
    if self.attn_dropout > 0 and not deterministic:
      drop = Dropout(self.attn_dropout, deterministic=False)
    out = attention(q, qkv[:, :, 1], qkv[:, :, 2], key_mask, causal, drop)
    out = dense(self.width, self.dtype, "proj")(out.reshape(b, l, self.width))
    return Dropout(self.proj_dropout)(out, deterministic=deterministic)


class CrossAttention(nn.Module):
  """Decoder cross-attention: q from the image tokens, kv (k | v) from the text tokens."""
  width: int
  heads: int
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, ctx, ctx_mask=None, *, deterministic: bool = True):
    b, l, _ = x.shape
    lc = ctx.shape[1]
    dh = self.width // self.heads
    q = dense(self.width, self.dtype, "q")(x).reshape(b, l, self.heads, dh)
    kv = dense(2 * self.width, self.dtype, "kv")(ctx).reshape(b, lc, 2, self.heads, dh)
    drop = None
    if self.attn_dropout > 0 and not deterministic:
      drop = Dropout(self.attn_dropout, deterministic=False)
    out = attention(q, kv[:, :, 0], kv[:, :, 1], ctx_mask, False, drop)
    out = dense(self.width, self.dtype, "proj")(out.reshape(b, l, self.width))
    return Dropout(self.proj_dropout)(out, deterministic=deterministic)


class Mlp(nn.Module):
  """timm `Mlp`: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""
  hidden: int
  out: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    x = gelu(dense(self.hidden, self.dtype, "fc1")(x))
    x = Dropout(self.dropout)(x, deterministic=deterministic)
    x = dense(self.out, self.dtype, "fc2")(x)
    return Dropout(self.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
  """Pre-norm ViT block (timm `Block`, qkv bias): x += attn(norm1 x); x += mlp(norm2 x)."""
  width: int
  heads: int
  mlp_dim: int
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  ln_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask=None, deterministic: bool = True):
    h = layer_norm(self.ln_eps, self.dtype, "norm1")(x)
    x = x + SelfAttention(self.width, self.heads, self.attn_dropout, self.proj_dropout,
                          self.dtype, name="attn")(h, key_mask, deterministic=deterministic)
    h = layer_norm(self.ln_eps, self.dtype, "norm2")(x)
    return x + Mlp(self.mlp_dim, self.width, self.proj_dropout, self.dtype, name="mlp")(
        h, deterministic=deterministic)


class DecoderBlock(nn.Module):
  """DREAM decoder block: self-attention over all slots -> cross-attention to text -> MLP.

  x [B, S, D], ctx [R, Lc, D] with R = g * B: g conditions per image (classifier-free
  guidance: g = 2, [cond rows; uncond rows]). The self-attention does not see the text, so
  it runs on the B images once and its output is repeated g times before the
  cross-attention (the same result as g identical rows). `queries` ([B, n] int32 slot
  indices): only those slots' outputs are computed, [R, n, D] (every slot is still a key and
  value of the self-attention). Sampling needs z only at the positions it reveals.
  """
  width: int
  heads: int
  mlp_dim: int
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  ln_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, ctx, ctx_mask=None, deterministic: bool = True, queries=None):
    args = (self.width, self.heads, self.attn_dropout, self.proj_dropout, self.dtype)
    g = ctx.shape[0] // x.shape[0]          # DREAM.decode checks that it divides
    h = layer_norm(self.ln_eps, self.dtype, "norm0")(x)
    a = SelfAttention(*args, name="self_attn")(h, deterministic=deterministic,
                                               queries=queries)
    if queries is not None:
      x = jnp.take_along_axis(x, queries[:, :, None], axis=1)
    x = x + a
    if g > 1:
      x = jnp.concatenate([x] * g, axis=0)
    h = layer_norm(self.ln_eps, self.dtype, "norm1")(x)
    x = x + CrossAttention(*args, name="cross_attn")(h, ctx, ctx_mask,
                                                     deterministic=deterministic)
    h = layer_norm(self.ln_eps, self.dtype, "norm2")(x)
    return x + Mlp(self.mlp_dim, self.width, self.proj_dropout, self.dtype, name="mlp")(
        h, deterministic=deterministic)


class ClipResBlock(nn.Module):
  """open_clip `ResidualAttentionBlock` (ln_1, attn in_proj/out_proj, ln_2, c_fc/c_proj)."""
  width: int
  heads: int
  mlp_dim: int
  ln_eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask=None):
    b, l, _ = x.shape
    h = layer_norm(self.ln_eps, self.dtype, "ln_1")(x)
    qkv = dense(3 * self.width, self.dtype, "in_proj")(h)
    qkv = qkv.reshape(b, l, 3, self.heads, self.width // self.heads)
    a = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask, causal=True)
    x = x + dense(self.width, self.dtype, "out_proj")(a.reshape(b, l, self.width))
    h = layer_norm(self.ln_eps, self.dtype, "ln_2")(x)
    h = dense(self.width, self.dtype, "c_proj")(gelu(dense(self.mlp_dim, self.dtype, "c_fc")(h)))
    return x + h


class BatchNorm(nn.Module):
  """BatchNorm matching torch (Sync)BatchNorm1d, statistics over the GLOBAL batch.

  Training normalises with the biased batch variance and updates the running variance with
  the UNBIASED one (torch semantics; Flax's BatchNorm uses the biased one). Running stats live
  in the 'batch_stats' collection: running = momentum*running + (1-momentum)*batch, with
  momentum 0.9 (= torch 0.1). Under jit with a batch-sharded input the mean/var reductions are
  global, so the statistics do not depend on the device count.
  """
  eps: float = 1e-5
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, use_running_average: bool):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
    bias = self.param("bias", zeros, (d,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((d,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((d,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean = x32.mean(0)
      var = jnp.square(x32 - mean).mean(0)
      n = x32.shape[0]
      if not self.is_initializing():
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(x.dtype)


# ------------------------------------------------------------ stacks of blocks
# Batch axes of the mesh the trainer builds (train/sharding.py BATCH_AXES; a test checks they
# agree). Models cannot import the trainer, so the names are repeated here.
BATCH_AXES = ("data", "fsdp")
REMAT_POLICIES = ("none", "dots", "full")


def sincos_2d_position_init(num_prefix: int):
  """Initializer of a [1, num_prefix + H*W, D] position table: zeros for the `num_prefix`
  buffer slots, then MAE's fixed 2-D sin-cos embedding of the row-major H x W grid (D/2
  channels encode the row, D/2 the column, each half sin then cos over frequencies
  1 / 10000^(k / (D/4))). Nearby positions start with similar vectors, so a function of
  the table that is smooth in space is learnable from few examples.
  """
  def init(key, shape, dtype=jnp.float32):
    del key
    _, s, d = shape
    side = int(round((s - num_prefix) ** 0.5))
    if side * side != s - num_prefix or d % 4:
      raise ValueError(f"sincos_2d_position_init: {s - num_prefix} positions are not a "
                       f"square grid, or width {d} is not a multiple of 4")
    omega = 1.0 / 10000.0 ** (jnp.arange(d // 4, dtype=jnp.float32) / (d // 4))
    coord = jnp.arange(side, dtype=jnp.float32)
    rows, cols = jnp.meshgrid(coord, coord, indexing="ij")
    def half(c):   # [side*side, D/2]
      a = c.reshape(-1, 1) * omega[None]
      return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=1)
    grid = jnp.concatenate([half(rows), half(cols)], axis=1)
    table = jnp.concatenate([jnp.zeros((num_prefix, d), jnp.float32), grid], axis=0)
    return table[None].astype(dtype)
  return init


def remat_policy_name(value) -> str:
  """config.model.remat -> 'none' | 'dots' | 'full'. Older configs stored a bool
  (True = full rematerialisation of every block, False = none)."""
  if isinstance(value, bool) or value is None:
    return "full" if value else "none"
  if value not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat={value!r}: expected one of {REMAT_POLICIES}")
  return value


def _checkpoint_policy(name: str):
  """'full': save nothing (recompute the block in the backward pass); 'dots': save the
  outputs of matmuls without batch dimensions (the Dense layers, rows flattened to 2-D),
  recompute the rest (LayerNorms, GELU, the [B, H, L, L] attention maps)."""
  return {"full": jax.checkpoint_policies.nothing_saveable,
          "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


def batch_shards(b: int) -> int:
  """How many shards the batch axes of the mesh in scope split a batch of b into (1 without
  a mesh, or when they do not divide b)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not all(a in mesh.axis_names for a in BATCH_AXES):
    return 1
  n = 1
  for a in BATCH_AXES:
    n *= mesh.shape[a]
  return n if b % n == 0 else 1


def constrain_batch(x):
  """Activation sharding: x [B, ...] split along B over the batch axes of the mesh in scope
  (FSDP then moves only parameters and gradients, never activations). A no-op without a mesh
  (tests, CPU runs) or when B does not divide."""
  if batch_shards(x.shape[0]) == 1:
    return x
  spec = jax.sharding.PartitionSpec(BATCH_AXES, *([None] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(x, spec)


class _ScanLayer(nn.Module):
  """One block as an nn.scan body: (x, args) -> (block(x, *args), None)."""
  block: Any
  kwargs: Any
  deterministic: Optional[bool]   # None: the block takes no `deterministic` argument

  @nn.compact
  def __call__(self, x, args):
    blk = self.block(**self.kwargs, name="block")
    if self.deterministic is None:
      y = blk(x, *args)
    else:
      y = blk(x, *args, deterministic=self.deterministic)
    return constrain_batch(y), None


class ScannedBlocks(nn.Module):
  """`depth` identical blocks in one `nn.scan`: XLA compiles the block once.

  Parameters: `<name>/block/...` with a leading [depth] axis on every leaf (block i is row i
  of each leaf). `unscan_params` / `scan_params` convert to / from the unrolled tree
  `<name>_<i>/...` the Python loop (`scan_layers=False`) creates.
  """
  block: Any
  kwargs: Any
  depth: int
  remat: str = "none"
  takes_deterministic: bool = True

  @nn.compact
  def __call__(self, x, *args, deterministic: bool = True):
    layer = _ScanLayer
    if self.remat != "none":
      layer = nn.remat(_ScanLayer, policy=_checkpoint_policy(self.remat), prevent_cse=False)
    scan = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                   "dropout": True},
                   in_axes=nn.broadcast, length=self.depth)
    det = deterministic if self.takes_deterministic else None
    y, _ = scan(self.block, dict(self.kwargs), det, name="layers")(constrain_batch(x), args)
    return y


def remat_block(block, remat: str, static_argnums=()):
  """The block class, wrapped in nn.remat with the named policy (unscanned stacks)."""
  if remat == "none":
    return block
  return nn.remat(block, policy=_checkpoint_policy(remat), static_argnums=static_argnums)


def scan_params(params: dict, name: str, depth: int) -> dict:
  """Unrolled -> scanned: `{name}_{i}/...` (i < depth) become `{name}/layers/block/...`
  stacked along a new axis 0. Other keys are kept. Works on any dict tree of arrays (params,
  EMA params, Adam moments)."""
  import numpy as np
  out = {k: v for k, v in params.items() if not _is_layer_key(k, name)}
  rows = [params[f"{name}_{i}"] for i in range(depth)]
  extra = [k for k in params if _is_layer_key(k, name) and int(k.rsplit("_", 1)[1]) >= depth]
  if extra:
    raise ValueError(f"scan_params: {extra} exceed depth {depth}")
  stack = jnp.stack if any(isinstance(l, jax.Array) for l in jax.tree.leaves(rows)) else np.stack
  out[name] = {"layers": {"block": jax.tree.map(lambda *xs: stack(xs, 0), *rows)}}
  return out


def unscan_params(params: dict, name: str) -> dict:
  """Scanned -> unrolled (inverse of `scan_params`)."""
  out = {k: v for k, v in params.items() if k != name}
  stacked = params[name]["layers"]["block"]
  depth = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(depth):
    out[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out


def _is_layer_key(key: str, name: str) -> bool:
  head, _, tail = key.rpartition("_")
  return head == name and tail.isdigit()
