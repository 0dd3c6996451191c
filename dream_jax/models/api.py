"""The model API: the calls every other part of dream_jax uses (docs/DESIGN.md section 6).

`DreamModel(spec, diffloss, ...)` (built from a run config by
`dream_jax.train.components.build_model`; models never read configs) is stateless: it holds
the Linen module, the static sizes and the head's diffusion chains (`DiffLoss`), and every
method is a pure function of `variables`, a dict `{'params': ..., 'batch_stats': ...}`
(parameters are fp32; compute runs in `spec.dtype`). Nothing here reads data, checkpoints
or meshes.

Calls (B batch, L image tokens, C token dim, S = buffer + L, E embed dim, Lc condition length):

  init(rng) -> variables
  encode_image(variables, tokens [B,L,C] f32, visible [B,L] bool, *, train, rng)
      -> ImageEncoding(hidden [B,S,D] f32, valid [B,S] bool, embedding [B,E] f32 unit-norm,
                       batch_stats)   # updated running stats when train=True
  embed_text(variables, clip_ids [B,ctx] int32, eot_pos [B] int32)
      -> (embedding [B,E] unit-norm, feats [B,ctx,W])   (eot: `Conditioning.eot_positions`)
  text_embedding(variables, clip_ids, eot_pos) -> embedding [B,E]   (the same embedding, the
      tower run only on the prefix up to the batch's last end-of-text position, bucketed)
  condition(variables, cond: dict, *, train, rng, text_feats=None) -> ctx [B,Lc,Ddec]
      cond = {'features': [B,Lc,Dc], 'mask': [B,Lc] bool}   (frozen t5 / minilm features)
           | {'ids': [B,Lc] int32, 'mask': [B,Lc] bool}     ('small' trainable encoder)
           | {'mask': ...} with text_feats                  ('clip_tower')
  decode(variables, hidden, valid, ctx [R,Lc,Ddec], ctx_mask, *, train, rng, positions=None)
      -> z [R,L,Ddec] f32   (R = g*B: g conditions per image, e.g. CFG's [cond; uncond];
                             positions [B,n] int32 -> z [R,n,Ddec] at those tokens only)
  diffusion_loss(variables, z [B,L,Ddec], target [B,L,C], weights [B,L] f32, rng)
      -> (loss scalar, per_token [B,L])   loss = sum(weights * per-token loss averaged over
                                           `diffusion_batch_mul` (t, noise) draws)
  diffusion_sample(variables, z [N,Ddec], rng, *, temperature, cfg_scale=None,
                   num_steps=None) -> x0 [N,C]   (with cfg: z = [cond rows; uncond rows])
  logit_scale(variables) -> scalar f32 (exp applied; clamped only if configured)

Random streams (names used by the trainer's key folding): 'dropout' (all dropout),
'mask' (orders and ratios, in masking.py), 'diffusion' (t and noise), 'caption_drop'.
BatchNorm statistics live in variables['batch_stats'] and are only updated by
`encode_image(..., train=True)`, which returns the new statistics (batch statistics are over
the global batch, so the result does not depend on the mesh).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from dream_jax.models.buckets import bucket_sizes, bucketed
from dream_jax.models.diffloss import DiffLoss
from dream_jax.models.dream import DREAM, ModelSpec, sort_visible, unsort_visible

__all__ = ["DreamModel", "ImageEncoding", "bucket_sizes", "bucketed"]


class ImageEncoding(NamedTuple):
  hidden: jax.Array        # [B, S, D] position-indexed encoder outputs (0 where invalid)
  valid: jax.Array         # [B, S] bool: buffer + visible slots
  embedding: jax.Array     # [B, E] L2-normalised image embedding
  batch_stats: dict        # BatchNorm running statistics after this call


class DreamModel:
  """Pure-function wrapper around the DREAM module (see the module docstring)."""

  def __init__(self, spec: ModelSpec, diffloss: DiffLoss, *, encoder_path: str,
               encoder_buckets: int, mask_text_padding: bool,
               logit_scale_max: Optional[float], text_buckets: int):
    """spec: the network's static sizes; diffloss: the head's loss/sampling chains;
    encoder_path 'drop' | 'masked'; encoder_buckets: static visible-count sizes ('drop');
    mask_text_padding: decoder/aligner ignore padded text keys; logit_scale_max: clamp
    (None: unclamped); text_buckets: static prefix lengths of the CLIP tower for pooled-only
    calls (5: 77 -> 16, 31, 47, 62, 77). Built from a run config by
    `train.components.build_model`."""
    self.spec = spec
    self.module = DREAM(spec)
    self.diffloss = diffloss
    self.train_diffusion = diffloss.train_diffusion
    self.encoder_path = encoder_path
    self.encoder_sizes = bucket_sizes(spec.seq_len, encoder_buckets)
    self.text_sizes = bucket_sizes(spec.text_ctx, text_buckets)
    self.mask_text_padding = mask_text_padding
    self.logit_scale_max = logit_scale_max

  # ------------------------------------------------------------------- setup
  def dummy_inputs(self, batch: int = 2):
    s = self.spec
    tokens = jnp.zeros((batch, s.seq_len, s.token_dim), jnp.float32)
    visible = jnp.ones((batch, s.seq_len), bool)
    ids = jnp.zeros((batch, s.text_ctx), jnp.int32)
    eot = jnp.zeros((batch,), jnp.int32)
    return tokens, visible, ids, eot, self.dummy_cond(batch)

  def dummy_cond(self, batch: int = 2):
    s = self.spec
    mask = jnp.ones((batch, s.cond_len), bool)
    if s.cond_encoder in ("t5", "minilm"):
      return dict(features=jnp.zeros((batch, s.cond_len, s.cond_dim), jnp.float32), mask=mask)
    if s.cond_encoder == "small":
      return dict(ids=jnp.zeros((batch, s.cond_len), jnp.int32), mask=mask)
    return dict(mask=mask)

  def init(self, rng):
    """variables = {'params', 'batch_stats'} (use under jax.jit with out_shardings)."""
    tokens, visible, ids, eot, cond = self.dummy_inputs()
    cond = {k: v for k, v in cond.items() if k != "mask"}
    variables = self.module.init({"params": rng}, tokens, visible, ids, eot, cond)
    return dict(variables)

  def _apply(self, variables, *args, method, rng=None, mutable=False, **kw):
    rngs = {"dropout": rng} if rng is not None else {}
    return self.module.apply(variables, *args, method=method, rngs=rngs, mutable=mutable, **kw)

  # --------------------------------------------------------------- encoder
  def encode_tokens(self, variables, tokens, visible, *, train=False, rng=None,
                    num_keep: Optional[int] = None, count=None,
                    sizes: Optional[tuple[int, ...]] = None):
    """Encoder only: (hidden [B,S,D], valid [B,S]). Path and bucket chosen by the config;
    `num_keep` forces the token-dropping path with that static length; `count` (traced
    int32 >= every visible count) with static `sizes` picks the bucket from those instead
    of from the batch's largest visible count and `encoder_sizes` (the sampler's steps).

    Token dropping: the input embedding, the visible-first reorder and its inverse run once;
    only the blocks are inside the `lax.switch` over buckets (models/buckets.py: whatever a
    branch holds is compiled once per bucket)."""
    det = not train
    if num_keep is None and count is None and self.encoder_path == "masked":
      return self._apply(variables, tokens, visible, None, det, method=DREAM.encode, rng=rng)
    buffer = self.spec.buffer_size
    x = self._apply(variables, tokens, method=DREAM.encode_embed)
    xs, order = sort_visible(x, visible, buffer)
    n_vis = visible.sum(axis=1).astype(jnp.int32)

    def run(k, xs, n_vis):
      return self._apply(variables, xs, n_vis, k, det, method=DREAM.encode_sorted, rng=rng)

    if num_keep is not None:
      hs = run(num_keep, xs, n_vis)
    elif count is not None:
      hs = bucketed(count, sizes, run, xs, n_vis)
    else:
      hs = bucketed(n_vis.max(), self.encoder_sizes, run, xs, n_vis)
    return unsort_visible(hs, visible, order, buffer)

  def project(self, variables, hidden, valid, *, train=False):
    """(embedding [B,E], batch_stats): BN batch statistics (and their update) when train."""
    if train:
      emb, upd = self._apply(variables, hidden, valid, False, method=DREAM.project_image,
                             mutable=["batch_stats"])
      return emb, upd["batch_stats"]
    emb = self._apply(variables, hidden, valid, True, method=DREAM.project_image)
    return emb, variables.get("batch_stats", {})

  def encode_image(self, variables, tokens, visible, *, train=False, rng=None,
                   num_keep: Optional[int] = None) -> ImageEncoding:
    hidden, valid = self.encode_tokens(variables, tokens, visible, train=train, rng=rng,
                                       num_keep=num_keep)
    emb, stats = self.project(variables, hidden, valid, train=train)
    return ImageEncoding(hidden, valid, emb, stats)

  # ------------------------------------------------------------------ text
  def embed_text(self, variables, clip_ids, eot_pos):
    """(embedding [B,E] unit-norm f32, token features [B,ctx,W]); eot_pos [B] int32 is the
    first end-of-text position (`Conditioning.eot_positions`)."""
    return self._apply(variables, clip_ids, eot_pos, method=DREAM.embed_text)

  def text_embedding(self, variables, clip_ids, eot_pos):
    """embedding [B,E] of `embed_text`, computed on the first k positions only, k the
    smallest static size > every eot_pos. The tower is causal and pools at eot_pos, so the
    positions after it cannot change the embedding (or its gradients): captions of ~10
    words then cost ~1/5 of the 77-position tower. Use `embed_text` for the token features."""
    # The token-embedding gather (and its scatter-add gradient into the vocabulary table)
    # runs once on the full context, outside the buckets; a branch holds only the blocks.
    x = self._apply(variables, clip_ids, method=DREAM.embed_text_tokens)

    def run(k, x, eot):
      return self._apply(variables, x[:, :k], eot, method=DREAM.embed_text_prefix)
    return bucketed(eot_pos.max() + 1, self.text_sizes, run, x, eot_pos)

  def condition(self, variables, cond, *, train=False, rng=None, text_feats=None):
    """Aligner output [B,Lc,Ddec]; see the module docstring for `cond`."""
    mask = cond.get("mask")
    kw = dict(features=cond.get("features"), ids=cond.get("ids"), text_feats=text_feats,
              mask=mask if self.mask_text_padding else None)
    if self.spec.cond_encoder == "small":
      kw["mask"] = mask  # the trainable encoder always ignores padding keys
    return self._apply(variables, method=DREAM.condition, rng=rng, deterministic=not train,
                       **kw)

  def decode(self, variables, hidden, valid, ctx, ctx_mask=None, *, train=False, rng=None,
             positions=None):
    """z [R,L,Ddec] f32 (`DREAM.decode`): ctx may hold g = R / B conditions per image
    (CFG: [cond rows; uncond rows]); `positions` [B,n] int32 gives z [R,n,Ddec] at those
    token positions only. `ctx_mask` is applied only with model.mask_text_padding."""
    m = ctx_mask if self.mask_text_padding else None
    return self._apply(variables, hidden, valid, ctx, m, not train, positions,
                       method=DREAM.decode, rng=rng)

  def logit_scale(self, variables):
    s = variables["params"]["logit_scale"]
    if self.logit_scale_max is not None:
      s = jnp.minimum(s, self.logit_scale_max)
    return jnp.exp(s)

  # ------------------------------------------------------------- diffusion
  def diffusion_net(self, variables, x, t, z, z_embedded=False):
    return self._apply(variables, x, t, z, z_embedded, method=DREAM.diffusion_net)

  def diffusion_loss(self, variables, z, target, weights, rng, max_per_sample=None):
    """`DiffLoss.loss` with this model's head: (sum(weights * per-token loss), per_token
    [B, L]); z [B, L, Ddec], target [B, L, C], weights [B, L] f32, rng the 'diffusion'
    stream, max_per_sample an optional static bound on each sample's count of weight > 0
    tokens (models/diffloss.py)."""
    head = functools.partial(self.diffusion_net, variables)
    return self.diffloss.loss(head, z, target, weights, rng, max_per_sample)

  def token_regression_loss(self, variables, z, target, weights):
    """sum(weights * per-token MSE of the linear readout of z) (loss.w_token_regression).

    z: [B, L, Ddec]; target: [B, L, C] clean tokens; weights: [B, L] (the diffusion
    loss's). Returns (loss, per_token [B, L]).
    """
    pred = self._apply(variables, z, method=DREAM.readout_tokens)
    per_tok = jnp.mean(jnp.square(pred - target.astype(jnp.float32)), axis=-1)
    return (weights * per_tok).sum(), per_tok

  def sample_diffusion(self, num_steps: Optional[str] = None):
    return self.diffloss.sample_diffusion(num_steps)

  def diffusion_sample(self, variables, z, rng, *, temperature=1.0, cfg_scale=None,
                       num_steps: Optional[str] = None):
    """`DiffLoss.sample` with this model's head: clean tokens [N, C] for conditions z
    ([N, Ddec], or [2N, Ddec] = [cond rows; uncond rows] with `cfg_scale`)."""
    head = functools.partial(self.diffusion_net, variables)
    return self.diffloss.sample(head, z, rng, temperature=temperature, cfg_scale=cfg_scale,
                                num_steps=num_steps)
