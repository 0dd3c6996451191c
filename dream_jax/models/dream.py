"""The DREAM network as one Flax Linen module with named methods.

One masked ViT encoder over image tokens is the shared visual backbone:
  * contrastive path: mean-pool ALL encoder outputs (buffer + visible) -> BatchNorm MLP ->
    L2-normalised image embedding, against a CLIP text tower trained from scratch;
  * generative path: decoder (self-attn over buffer + all positions, cross-attn to the text
    condition from the aligner) -> per-token condition z -> diffusion MLP head.

Other code never calls this module directly: `dream_jax.models.api.DreamModel` wraps each
method as a pure function of the variables (`{'params', 'batch_stats'}`) with documented
shapes and random streams. The methods here take a `deterministic` flag for dropout.

Encoder outputs are kept in a POSITION-INDEXED layout: `hidden` [B, S, D] with S = buffer + L,
slot i < buffer for buffer token i and slot buffer + p for image position p; `valid` [B, S]
marks the slots that exist (buffer + visible). Both encoder paths return this layout, so the
decoder, pooling and tests never care which path ran:
  * 'drop' (MAE style): gather the visible positions in increasing order (as the reference)
    into a static `num_keep` slots, run the blocks on buffer + num_keep tokens with padded
    slots masked out of attention, gather the results back by the inverse permutation
    (`sort_visible` / `unsort_visible`: a sort-free partition, models/buckets.py). Cost per
    block ~ (buffer+K) tokens; the api chooses K from a few static buckets with `lax.switch`,
    whose branches hold only the blocks (`encode_sorted`).
  * 'masked': all buffer + L tokens run, attention keys restricted to buffer + visible.
    Cost ~ (buffer+L) tokens whatever the ratio; no gather/scatter.
  Encoder forward FLOPs per image at B/16 (buffer 64, L 256, D 768, 12 blocks; printed by
  `python -m dream_jax.tools.describe --config=configs/dream_b16.py`):
    mask 0.3: masked 58.1 GFLOPs; drop 43.5 exact (179 visible), 45.9 with 4 buckets (0.79x)
    mask 0.9: masked 58.1 GFLOPs; drop 15.4 exact (25 visible), 22.4 with 4 buckets (0.38x)
  The bucket is chosen from the LARGEST visible count of the global batch, so with the
  paper's per-group ratios (some group is nearly always lightly masked) training mostly runs
  the top buckets; sampling (one ratio per step for the whole batch) gets the full saving.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dream_jax.models import layers
from dream_jax.models.buckets import partition, permute_rows
from dream_jax.models.diffusion_head import SimpleMLPAdaLN

normal = nn.initializers.normal


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Static sizes of a DREAM network (built from a run config by
  `dream_jax.train.components.model_spec`; models never read configs)."""
  seq_len: int
  token_dim: int
  width: int
  depth: int
  heads: int
  dec_width: int
  dec_depth: int
  dec_heads: int
  mlp_dim: int
  dec_mlp_dim: int
  buffer_size: int
  attn_dropout: float
  proj_dropout: float
  ln_eps: float
  embed_dim: int
  proj_hidden: int
  bn_eps: float
  bn_momentum: float
  logit_scale_init: float
  aligner_depth: int
  cond_encoder: str
  cond_dim: int
  cond_len: int
  text_vocab: int
  text_ctx: int
  text_width: int
  text_layers: int
  text_heads: int
  text_mlp_dim: int
  text_ln_eps: float
  text_token_init_std: float   # CLIP tower token_embedding init std
  small_width: int
  small_layers: int
  small_heads: int
  diff_depth: int
  diff_width: int
  dtype: str = "float32"
  remat: str = "none"           # 'none' | 'dots' | 'full' (layers.remat_policy_name)
  scan_layers: bool = False     # nn.scan over identical blocks (layers.ScannedBlocks)
  token_readout: bool = False   # linear z -> token map for loss.w_token_regression
  pos_embed_init: str = "normal"  # encoder/decoder position tables: 'normal' (0.02,
                                  # official) | 'sincos2d' (layers.sincos_2d_position_init)


def sort_visible(x, visible, buffer_size: int):
  """Encoder input [B, buffer+L, D] -> (the same with the image slots reordered visible
  first, in increasing position order as the reference's gather; order = (perm, inv) of
  `buckets.partition`). The reorder is a gather whose gradient is the inverse gather."""
  perm, inv = partition(visible)
  img = permute_rows(x[:, buffer_size:], perm, inv)
  return jnp.concatenate([x[:, :buffer_size], img], axis=1), (perm, inv)


def unsort_visible(hs, visible, order, buffer_size: int):
  """Inverse of `sort_visible` on encoder outputs: (hidden [B, buffer+L, D] position-indexed
  with invisible slots 0, valid [B, buffer+L])."""
  perm, inv = order
  img = permute_rows(hs[:, buffer_size:], inv, perm)
  img = jnp.where(visible[..., None], img, 0.0)
  valid = jnp.concatenate([jnp.ones((hs.shape[0], buffer_size), bool), visible], axis=1)
  return jnp.concatenate([hs[:, :buffer_size], img], axis=1), valid


class ProjectionMLP(nn.Module):
  """Official `post_mlp_stablerep`: Linear-BN-ReLU-Linear-BN-ReLU-Linear (D->h->h->E)."""
  hidden: int
  out: int
  bn_eps: float
  bn_momentum: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, *, use_running_average: bool):
    for i in (1, 2):
      x = layers.dense(self.hidden, self.dtype, f"layer{i}")(x)
      x = layers.BatchNorm(self.bn_eps, self.bn_momentum, name=f"bn{i}")(
          x, use_running_average=use_running_average)
      x = nn.relu(x)
    return layers.dense(self.out, self.dtype, "layer3")(x)


class ClipTextTower(nn.Module):
  """CLIP text transformer trained from scratch (open_clip layout).

  Token + position embedding, causal residual blocks over all `ctx` positions, ln_final,
  pooled at the FIRST end-of-text position (`eot_pos`), times `text_projection`.
  """
  spec: ModelSpec
  dtype: jnp.dtype

  def setup(self):
    s = self.spec
    self.token_embedding = self.param("token_embedding", normal(s.text_token_init_std),
                                      (s.text_vocab, s.text_width))
    self.positional_embedding = self.param("positional_embedding", normal(0.01),
                                           (s.text_ctx, s.text_width))
    self.text_projection = self.param("text_projection", normal(s.text_width ** -0.5),
                                      (s.text_width, s.embed_dim))
    kw = dict(width=s.text_width, heads=s.text_heads, mlp_dim=s.text_mlp_dim,
              ln_eps=s.text_ln_eps, dtype=self.dtype)
    if s.scan_layers and s.text_layers:
      self.resblocks = layers.ScannedBlocks(layers.ClipResBlock, kw, s.text_layers, s.remat,
                                            takes_deterministic=False)
    else:
      blk = layers.remat_block(layers.ClipResBlock, s.remat)
      self.resblocks = [blk(**kw) for _ in range(s.text_layers)]
    self.ln_final = layers.layer_norm(s.text_ln_eps, self.dtype)

  def __call__(self, ids, eot_pos):
    return self.from_embedded(self.embed(ids), eot_pos)

  def embed(self, ids):
    """ids [B, n] int32 -> token + position embedding [B, n, text_width]."""
    pos = self.positional_embedding[None, : ids.shape[1]]
    return (jnp.take(self.token_embedding, ids, axis=0) + pos).astype(self.dtype)

  def from_embedded(self, x, eot_pos):
    """Embedded tokens [B, n, W] (any prefix of the context: the blocks are causal) ->
    (pooled @ text_projection [B, E] float32, ln_final features [B, n, W])."""
    if isinstance(self.resblocks, layers.ScannedBlocks):
      x = self.resblocks(x)
    else:
      for blk in self.resblocks:
        x = layers.constrain_batch(blk(x))
    feats = self.ln_final(x)
    pooled = jnp.take_along_axis(feats, eot_pos[:, None, None], axis=1)[:, 0]
    return pooled.astype(jnp.float32) @ self.text_projection, feats


class SmallCondEncoder(nn.Module):
  """Trainable condition encoder for runs without pretrained text weights.

  Embedding + positions + bidirectional ViT blocks (padding keys masked) + LayerNorm.
  ids [B, Lc] int32, mask [B, Lc] bool -> [B, Lc, small_width].
  """
  spec: ModelSpec
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, ids, mask, *, deterministic: bool):
    s = self.spec
    tok = self.param("token_embedding", normal(0.02), (s.text_vocab, s.small_width))
    pos = self.param("pos_embed", normal(0.02), (s.text_ctx, s.small_width))
    x = (jnp.take(tok, ids, axis=0) + pos[None, : ids.shape[1]]).astype(self.dtype)
    kw = dict(width=s.small_width, heads=s.small_heads, mlp_dim=4 * s.small_width,
              attn_dropout=0.0, proj_dropout=0.0, ln_eps=s.ln_eps, dtype=self.dtype)
    if s.scan_layers and s.small_layers:
      return layers.layer_norm(s.ln_eps, self.dtype, "norm")(layers.ScannedBlocks(
          layers.Block, kw, s.small_layers, s.remat, name="blocks")(
              x, mask, deterministic=deterministic))
    blk = layers.remat_block(layers.Block, s.remat, static_argnums=(3,))
    for i in range(s.small_layers):
      x = layers.constrain_batch(blk(**kw, name=f"blocks_{i}")(x, mask, deterministic))
    return layers.layer_norm(s.ln_eps, self.dtype, "norm")(x)


class DREAM(nn.Module):
  """The DREAM network. See the module docstring for the token layout."""
  spec: ModelSpec

  @property
  def _dtype(self):
    return jnp.dtype(self.spec.dtype)

  def setup(self):
    s, dt = self.spec, self._dtype
    S = s.buffer_size + s.seq_len
    # Encoder. The official code writes class_emb(label 0) into every buffer slot; for
    # text-to-image that is one learned vector, stored [1, D] like one row of that table.
    self.z_proj = layers.dense(s.width, dt)
    self.buffer_embed = self.param("buffer_embed", normal(0.02), (1, s.width))
    pos_init = (layers.sincos_2d_position_init(s.buffer_size)
                if s.pos_embed_init == "sincos2d" else normal(0.02))
    self.encoder_pos_embed = self.param("encoder_pos_embed", pos_init, (1, S, s.width))
    self.z_proj_ln = layers.layer_norm(s.ln_eps, dt)
    self.encoder_blocks = self._stack(layers.Block, s.depth, dict(
        width=s.width, heads=s.heads, mlp_dim=s.mlp_dim, attn_dropout=s.attn_dropout,
        proj_dropout=s.proj_dropout, ln_eps=s.ln_eps, dtype=dt))
    self.encoder_norm = layers.layer_norm(s.ln_eps, dt)
    # Contrastive heads.
    self.image_projection = ProjectionMLP(s.proj_hidden, s.embed_dim, s.bn_eps,
                                          s.bn_momentum, dt)
    self.text_tower = ClipTextTower(s, dt)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(s.logit_scale_init),
                                  ())
    # Generation condition: optional trainable encoder, then the aligner.
    if s.cond_encoder == "small":
      self.cond_encoder = SmallCondEncoder(s, dt)
    self.text_proj = layers.dense(s.dec_width, dt)
    self.text_pos_embed = self.param("text_pos_embed", nn.initializers.zeros,
                                     (1, s.cond_len, s.dec_width))
    self.text_proj_ln = layers.layer_norm(s.ln_eps, dt)
    dec_kw = dict(width=s.dec_width, heads=s.dec_heads, mlp_dim=s.dec_mlp_dim,
                  attn_dropout=s.attn_dropout, proj_dropout=s.proj_dropout, ln_eps=s.ln_eps,
                  dtype=dt)
    self.text_aligner = self._stack(layers.Block, s.aligner_depth, dec_kw)
    # Decoder.
    self.decoder_embed = layers.dense(s.dec_width, dt)
    self.mask_token = self.param("mask_token", normal(0.02), (1, 1, s.dec_width))
    self.decoder_pos_embed = self.param("decoder_pos_embed", pos_init, (1, S, s.dec_width))
    self.decoder_proj_ln = layers.layer_norm(s.ln_eps, dt)
    self.decoder_blocks = self._stack(layers.DecoderBlock, s.dec_depth, dec_kw)
    self.decoder_norm = layers.layer_norm(s.ln_eps, dt)
    self.diffusion_pos_embed = self.param("diffusion_pos_embed", normal(0.02),
                                          (1, s.seq_len, s.dec_width))
    self.diffloss = SimpleMLPAdaLN(in_channels=s.token_dim, width=s.diff_width,
                                   depth=s.diff_depth, out_channels=2 * s.token_dim, dtype=dt)
    if s.token_readout:
      self.token_readout = nn.Dense(s.token_dim, kernel_init=nn.initializers.zeros,
                                    name="token_readout")

  def _stack(self, block, depth: int, kwargs: dict):
    """`depth` blocks: one ScannedBlocks (params `<attr>/layers/block/...`, stacked) with
    `scan_layers`, else a list (params `<attr>_<i>/...`), rematerialised per `remat`."""
    s = self.spec
    if s.scan_layers and depth:
      return layers.ScannedBlocks(block, kwargs, depth, s.remat)
    # The last positional argument is `deterministic` (static under nn.remat).
    static = (3,) if block is layers.Block else (4,)
    cls = layers.remat_block(block, s.remat, static_argnums=static)
    return [cls(**kwargs) for _ in range(depth)]

  @staticmethod
  def _run(blocks, x, *args):
    """Runs a `_stack`: args are the block's positional arguments, `deterministic` last."""
    if isinstance(blocks, layers.ScannedBlocks):
      return blocks(x, *args[:-1], deterministic=args[-1])
    x = layers.constrain_batch(x)
    for blk in blocks:
      x = layers.constrain_batch(blk(x, *args))
    return x

  # ------------------------------------------------------------------ encoder
  def encode(self, tokens, visible, num_keep: Optional[int] = None,
             deterministic: bool = True):
    """Masked encoder.

    Args:
      tokens: [B, L, token_dim] float32 image tokens (masked ones may hold anything).
      visible: [B, L] bool, True = the encoder sees this position.
      num_keep: None -> full-length attention-masked path; an int K -> token-dropping path
        with K static slots (must be >= the largest visible count in the batch; extra slots
        are padding masked out of attention).
    Returns:
      hidden [B, buffer+L, D] (position-indexed; invalid slots are 0), valid [B, buffer+L].
    """
    x = self.encode_embed(tokens)
    if num_keep is None:
      valid = jnp.concatenate([jnp.ones((x.shape[0], self.spec.buffer_size), bool), visible],
                              axis=1)
      h = self._run(self.encoder_blocks, x, valid, deterministic)
      h = self.encoder_norm(h)
      return jnp.where(valid[..., None], h, 0).astype(jnp.float32), valid
    xs, order = sort_visible(x, visible, self.spec.buffer_size)
    hs = self.encode_sorted(xs, visible.sum(axis=1), num_keep, deterministic)
    return unsort_visible(hs, visible, order, self.spec.buffer_size)

  def encode_embed(self, tokens):
    """Encoder input [B, buffer+L, D]: z_proj(tokens) after the buffer tokens, + position
    embedding, LayerNorm (position-indexed, every slot)."""
    s = self.spec
    b = tokens.shape[0]
    x = self.z_proj(tokens.astype(self._dtype))
    pos = self.encoder_pos_embed.astype(x.dtype)[0]                               # [S, D]
    # LayerNorm is per slot, so the buffer slots (the same for every image) are normalised
    # once and broadcast, not B times.
    buf = self.z_proj_ln(self.buffer_embed.astype(x.dtype) + pos[:s.buffer_size])  # [buf, D]
    x = self.z_proj_ln(x + pos[s.buffer_size:])
    return jnp.concatenate([jnp.broadcast_to(buf, (b,) + buf.shape), x], axis=1)

  def encode_sorted(self, xs, n_vis, num_keep: int, deterministic: bool = True):
    """Token-dropping encoder blocks on the first buffer + num_keep slots of `xs`
    [B, buffer+L, D] (visible tokens first: `sort_visible`); n_vis [B] int32 visible counts
    (<= num_keep; later slots are padding, masked out of attention). Returns [B, buffer+L, D]
    float32 in the same slot order, zero after buffer + num_keep."""
    s = self.spec
    b, n_slots = xs.shape[0], s.buffer_size + num_keep
    slot_ok = jnp.arange(num_keep)[None, :] < n_vis[:, None]                  # [B, K]
    key_ok = jnp.concatenate([jnp.ones((b, s.buffer_size), bool), slot_ok], axis=1)
    h = self._run(self.encoder_blocks, xs[:, :n_slots], key_ok, deterministic)
    h = self.encoder_norm(h).astype(jnp.float32)
    return jnp.pad(h, ((0, 0), (0, xs.shape[1] - n_slots), (0, 0)))

  def project_image(self, hidden, valid, use_running_average: bool = True):
    """Mean over ALL valid encoder outputs (buffer + visible) -> BN-MLP -> L2 norm: [B, E]."""
    w = valid.astype(jnp.float32)[..., None]
    # Batch-split like the encoder outputs (the pooled gradient otherwise came back through
    # an all-to-all from the FSDP-sharded projection; no-op without a mesh).
    pooled = layers.constrain_batch((hidden * w).sum(1) / jnp.maximum(w.sum(1), 1.0))
    emb = self.image_projection(pooled, use_running_average=use_running_average)
    return l2_normalize(emb.astype(jnp.float32))

  # --------------------------------------------------------------------- text
  def embed_text(self, ids, eot_pos):
    """CLIP text tower: ids [B, ctx] int32, eot_pos [B] int32 ->
    (embedding [B, E] L2-normalised float32, token features [B, ctx, text_width])."""
    pooled, feats = self.text_tower(ids, eot_pos)
    return l2_normalize(pooled), feats

  def embed_text_tokens(self, ids):
    """The CLIP tower's input embedding [B, n, text_width] of ids [B, n] (see
    `embed_text_prefix`)."""
    return self.text_tower.embed(ids)

  def embed_text_prefix(self, x, eot_pos):
    """`embed_text` from the tower's input embedding `x` [B, k, W] of the first k positions
    (k > every eot_pos): the embedding [B, E] only."""
    return l2_normalize(self.text_tower.from_embedded(x, eot_pos)[0])

  def condition(self, features=None, mask=None, ids=None, *, deterministic: bool = True,
                text_feats=None):
    """Generation condition tokens for the decoder's cross-attention.

    Inputs by `cond_encoder`: 't5'/'minilm' -> `features` [B, Lc, cond_dim] from the frozen
    encoder; 'small' -> `ids` [B, Lc] (+ `mask`); 'clip_tower' -> `text_feats` (the CLIP
    tower's ln_final tokens). Returns [B, Lc, dec_width]: text_proj -> + position embedding
    -> LayerNorm -> aligner blocks (decoder width/heads/mlp). `mask` [B, Lc] bool is used
    only when the caller asks for padding masking (the reference attends to pads).
    """
    s = self.spec
    if s.cond_encoder == "small":
      features = self.cond_encoder(ids, mask if mask is not None else ids >= 0,
                                   deterministic=deterministic)
    elif s.cond_encoder == "clip_tower":
      features = text_feats
    x = self.text_proj(features.astype(self._dtype))
    x = self.text_proj_ln(x + self.text_pos_embed[:, : x.shape[1]].astype(x.dtype))
    return self._run(self.text_aligner, x, mask, deterministic)

  # ------------------------------------------------------------------ decoder
  def decode(self, hidden, valid, ctx, ctx_mask=None, deterministic: bool = True,
             positions=None):
    """The per-token condition of the diffusion head.

    Args:
      hidden, valid: [B, S, D], [B, S] position-indexed encoder output of B images.
      ctx, ctx_mask: [R, Lc, dec_width], [R, Lc] with R = g * B: g conditions per image,
        condition-major (row r decodes image r % B; CFG: g = 2, [cond rows; uncond rows]).
        Every step before the first cross-attention runs once per image.
      positions: optional [B, n] int32 token positions in [0, L): z only there. The last
        block then computes only those slots' outputs.
      g > 1 and `positions` are the sampler's (deterministic) path, `_decode_shared`.
    Returns:
      z [R, L, dec_width] float32 (or [R, n, dec_width] with `positions`).
    """
    s = self.spec
    b = hidden.shape[0]
    g, rest = divmod(ctx.shape[0], b)
    if rest or g < 1:
      raise ValueError(f"decode: ctx has {ctx.shape[0]} rows, not a multiple of the {b} "
                       f"images")
    x = self.decoder_embed(hidden.astype(self._dtype))
    x = jnp.where(valid[..., None], x, self.mask_token.astype(x.dtype))
    x = self.decoder_proj_ln(x + self.decoder_pos_embed.astype(x.dtype))
    dpos = self.diffusion_pos_embed[0].astype(x.dtype)                     # [L, D]
    tile = lambda a: a if g == 1 else jnp.concatenate([a] * g, axis=0)
    if g == 1 and positions is None:          # training and evaluation: every slot, 1:1
      x = self._run(self.decoder_blocks, x, ctx, ctx_mask, deterministic)
      x = self.decoder_norm(x[:, s.buffer_size:])
    else:
      if not deterministic:
        raise ValueError("decode with several conditions per image or with `positions` is "
                         "the sampler's path: it needs deterministic=True")
      slots = None if positions is None else positions + s.buffer_size
      x = self._decode_shared(x, ctx, ctx_mask, slots, tile)
      x = self.decoder_norm(x if slots is not None else x[:, s.buffer_size:])
    dpos = dpos[None] if positions is None else tile(jnp.take(dpos, positions, axis=0))
    return (x + dpos).astype(jnp.float32)

  def _decode_shared(self, x, ctx, ctx_mask, slots, tile):
    """The decoder blocks at inference on x [B, S, D] with ctx [g*B, ...]: block 0 takes
    the B image rows (its self-attention runs once per image, `DecoderBlock`), the last
    block computes only `slots` ([B, n] or None). A scanned stack runs as block 0, a
    `lax.scan` over the middle rows of the stacked parameters, then the last block."""
    blocks, b = self.decoder_blocks, x.shape[0]
    if isinstance(blocks, layers.ScannedBlocks):
      stacked = blocks.variables["params"]["layers"]["block"]
      one = layers.DecoderBlock(**blocks.kwargs, parent=None)   # applied functionally
      call = lambda p, h, q=None: one.apply({"params": p}, h, ctx, ctx_mask, True, q)
      depth = blocks.depth
      layer = lambda i: functools.partial(call, jax.tree.map(lambda w: w[i], stacked))

      def middle(h):
        body = lambda h, p: (layers.constrain_batch(call(p, h)), None)
        return jax.lax.scan(body, h, jax.tree.map(lambda w: w[1:depth - 1], stacked))[0]
    else:
      depth = len(blocks)
      layer = lambda i: lambda h, q=None: blocks[i](h, ctx, ctx_mask, True, queries=q)

      def middle(h):
        for i in range(1, depth - 1):
          h = layers.constrain_batch(layer(i)(h))
        return h
    queries = lambda h: None if slots is None else (slots if h.shape[0] == b else tile(slots))
    x = layers.constrain_batch(x)
    if depth == 0:
      x = tile(x)
      return x if slots is None else jnp.take_along_axis(x, tile(slots)[..., None], axis=1)
    x = layers.constrain_batch(layer(0)(x, queries(x) if depth == 1 else None))
    if depth > 2:
      x = middle(x)
    if depth > 1:
      x = layers.constrain_batch(layer(depth - 1)(x, queries(x)))
    return x

  # ----------------------------------------------------------- diffusion head
  def diffusion_net(self, x, t, z, z_embedded=False):
    """Per-token head: x [N, token_dim], t [N] int32 (original timesteps), z [N, dec_width]
    -> [N, 2*token_dim] float32 (eps | variance interpolation values). The sampling chain's
    forms (x=None: the condition embedding only; a shared scalar t; z_embedded) are
    `SimpleMLPAdaLN.__call__`'s."""
    return self.diffloss(x, t, z, z_embedded=z_embedded).astype(jnp.float32)

  def readout_tokens(self, z):
    """Linear token readout (only with loss.w_token_regression): z [..., Ddec] ->
    [..., token_dim] float32."""
    return self.token_readout(z.astype(jnp.float32))

  def __call__(self, tokens, visible, clip_ids, eot_pos, cond):
    """Runs every part once (used by `init`)."""
    hidden, valid = self.encode(tokens, visible)
    emb = self.project_image(hidden, valid, use_running_average=False)
    temb, feats = self.embed_text(clip_ids, eot_pos)
    ctx = self.condition(text_feats=feats, **cond)
    z = self.decode(hidden, valid, ctx)
    n = tokens.shape[0] * tokens.shape[1]
    out = self.diffusion_net(tokens.reshape(n, -1), jnp.zeros((n,), jnp.int32),
                             z.reshape(n, -1))
    if self.spec.token_readout:
      self.readout_tokens(z)   # creates its parameters
    return emb, temb, out


def l2_normalize(x, eps: float = 1e-12):
  """torch F.normalize semantics: x / max(||x||, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ------------------------------------------------------- scanned <-> unrolled trees
def block_stacks(spec: ModelSpec) -> list[tuple[tuple[str, ...], str, int]]:
  """(parent path, stack name, depth) of every stack of identical blocks in the params."""
  out = [((), "encoder_blocks", spec.depth), ((), "text_aligner", spec.aligner_depth),
         ((), "decoder_blocks", spec.dec_depth), (("text_tower",), "resblocks",
                                                   spec.text_layers)]
  if spec.cond_encoder == "small":
    out.append((("cond_encoder",), "blocks", spec.small_layers))
  return [x for x in out if x[2] > 0]


def convert_layout(params: dict, spec: ModelSpec, *, scanned: bool) -> dict:
  """Params (or any tree shaped like them: EMA, Adam moments) between the two layouts.

  scanned=True: unrolled `encoder_blocks_3/attn/qkv/kernel` [D, 3D] -> row 3 of
  `encoder_blocks/layers/block/attn/qkv/kernel` [depth, D, 3D] (likewise text_aligner,
  decoder_blocks, text_tower/resblocks, cond_encoder/blocks). scanned=False: the inverse.
  The two models compute the same function on converted params (tests/test_scan_remat.py).
  """
  out = dict(params)
  for parent, name, depth in block_stacks(spec):
    fn = ((lambda t, n=name, d=depth: layers.scan_params(dict(t), n, d)) if scanned
          else (lambda t, n=name: layers.unscan_params(dict(t), n)))
    out = _update_at(out, parent, fn)
  return out


def _update_at(tree: dict, path: tuple, fn) -> dict:
  if not path:
    return fn(tree)
  out = dict(tree)
  out[path[0]] = _update_at(tree[path[0]], path[1:], fn)
  return out
