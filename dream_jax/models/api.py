"""The model API: the calls every other part of dream_jax uses (DESIGN.md section 6).

`DreamModel(config)` is stateless: it holds the Linen module, the static sizes and the two
diffusion processes, and every method is a pure function of `variables`, a dict
`{'params': ..., 'batch_stats': ...}` (parameters are fp32; compute runs in
`config.compute_dtype`). Nothing here reads data, checkpoints or meshes.

Calls (B batch, L image tokens, C token dim, S = buffer + L, E embed dim, Lc condition length):

  init(rng) -> variables
  encode_image(variables, tokens [B,L,C] f32, visible [B,L] bool, *, train, rng)
      -> ImageEncoding(hidden [B,S,D] f32, valid [B,S] bool, embedding [B,E] f32 unit-norm,
                       batch_stats)   # updated running stats when train=True
  embed_text(variables, clip_ids [B,ctx] int32) -> (embedding [B,E] unit-norm, feats [B,ctx,W])
  condition(variables, cond: dict, *, train, rng, text_feats=None) -> ctx [B,Lc,Ddec]
      cond = {'features': [B,Lc,Dc], 'mask': [B,Lc] bool}   (frozen t5 / minilm features)
           | {'ids': [B,Lc] int32, 'mask': [B,Lc] bool}     ('small' trainable encoder)
           | {'mask': ...} with text_feats                  ('clip_tower')
  decode(variables, enc: ImageEncoding, ctx, ctx_mask, *, train, rng) -> z [B,L,Ddec] f32
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
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.diffusion import gaussian
from dream_jax.models import layers
from dream_jax.models.dream import DREAM, ModelSpec, spec_from_config
from dream_jax.tokenizers.base import first_eot_position


class ImageEncoding(NamedTuple):
  hidden: jax.Array        # [B, S, D] position-indexed encoder outputs (0 where invalid)
  valid: jax.Array         # [B, S] bool: buffer + visible slots
  embedding: jax.Array     # [B, E] L2-normalised image embedding
  batch_stats: dict        # BatchNorm running statistics after this call


def bucket_sizes(n: int, buckets: int) -> tuple[int, ...]:
  """Static lengths a dynamic count is rounded up to: ceil(n*k/buckets), k=1..buckets."""
  return tuple(sorted({max(1, math.ceil(n * k / buckets)) for k in range(1, buckets + 1)}))


def bucketed(count, sizes, branch_fn, *operands):
  """Runs `branch_fn(size, *operands)` for the smallest static size >= count.

  All branches are compiled into one program and `lax.switch` executes only the chosen one,
  so the work scales with the bucket, not with the worst case. `count` must be a traced or
  concrete int scalar that is <= sizes[-1].
  """
  if len(sizes) == 1:
    return branch_fn(sizes[0], *operands)
  idx = jnp.searchsorted(jnp.asarray(sizes), count, side="left")
  idx = jnp.minimum(idx, len(sizes) - 1)
  return jax.lax.switch(idx, [functools.partial(branch_fn, k) for k in sizes], *operands)


class DreamModel:
  """Pure-function wrapper around the DREAM module (see the module docstring)."""

  def __init__(self, config):
    self.config = config
    self.spec: ModelSpec = spec_from_config(config)
    self.module = DREAM(self.spec)
    m = config.model
    self.train_diffusion = self._diffusion_chain("")
    self._sample_diffusions = {}
    self.encoder_path = m.encoder_path
    self.encoder_sizes = bucket_sizes(self.spec.seq_len, m.encoder_buckets)
    self.diffusion_buckets = m.diffusion_buckets
    self.diffusion_batch_mul = m.diffusion_batch_mul
    self.mask_text_padding = m.mask_text_padding
    self.logit_scale_max = m.logit_scale_max
    self.clip_denoised = config.sampling.get("clip_denoised")

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
                    num_keep: Optional[int] = None):
    """Encoder only: (hidden [B,S,D], valid [B,S]). Path and bucket chosen by the config;
    `num_keep` forces the token-dropping path with that static length."""
    det = not train

    def run(k, tokens, visible):
      return self._apply(variables, tokens, visible, k, det, method=DREAM.encode, rng=rng)

    if num_keep is not None:
      return run(num_keep, tokens, visible)
    if self.encoder_path == "masked":
      return run(None, tokens, visible)
    n_max = visible.sum(axis=1).max()
    return bucketed(n_max, self.encoder_sizes, run, tokens, visible)

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
  def eot_positions(self, clip_ids, eot_id: int):
    return first_eot_position(clip_ids, eot_id).astype(jnp.int32)

  def embed_text(self, variables, clip_ids, eot_pos):
    """(embedding [B,E] unit-norm f32, token features [B,ctx,W]); eot_pos [B] int32 is the
    first end-of-text position (see `eot_positions`)."""
    return self._apply(variables, clip_ids, eot_pos, method=DREAM.embed_text)

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
             capture_intermediates: bool = False):
    """z [B,L,Ddec] f32. `ctx_mask` is applied only with model.mask_text_padding.

    With `capture_intermediates` returns (z, intermediates): every submodule's output, as
    flax's `capture_intermediates` collects it (diagnostics, e.g. tools/condition_probe).
    """
    m = ctx_mask if self.mask_text_padding else None
    if capture_intermediates:
      z, state = self._apply(variables, hidden, valid, ctx, m, not train, method=DREAM.decode,
                             rng=rng, capture_intermediates=True)
      return z, state["intermediates"]
    return self._apply(variables, hidden, valid, ctx, m, not train, method=DREAM.decode,
                       rng=rng)

  def logit_scale(self, variables):
    s = variables["params"]["logit_scale"]
    if self.logit_scale_max is not None:
      s = jnp.minimum(s, self.logit_scale_max)
    return jnp.exp(s)

  # ------------------------------------------------------------- diffusion
  def diffusion_net(self, variables, x, t, z):
    return self._apply(variables, x, t, z, method=DREAM.diffusion_net)

  def diffusion_loss(self, variables, z, target, weights, rng, *, t_min: int = 0):
    """Weighted diffusion loss computed ONLY on tokens with weight > 0.

    t and noise are drawn for every (token, draw) at full shape and the counting rows are
    gathered into a static bucket, so the loss and gradients equal the reference's
    compute-everything-then-mask, with the head's FLOPs proportional to the counting tokens.

    Args:
      z: [B, L, Ddec] decoder conditions; target: [B, L, C] clean tokens;
      weights: [B, L] f32 (e.g. masked * gate / count); rng: the 'diffusion' stream.
      t_min: t is drawn uniformly from [t_min, num_timesteps). 0 (the reference and every
        training path) is the full range; tools/condition_probe's `--t_min` raises it to
        train and measure the head on high-noise draws only (a diagnostic).
    Returns:
      (sum(weights * per_token_loss), per_token_loss [B, L] (0 where weight == 0)).
    """
    b, l, c = target.shape
    n, mul = b * l, self.diffusion_batch_mul
    num_t = self.train_diffusion.num_timesteps
    if not 0 <= t_min < num_t:
      raise ValueError(f"t_min must be in [0, {num_t}), got {t_min}")
    # Rows are selected within G groups of whole samples, G = the batch shards of the mesh
    # in scope (1 without one): each device gathers its own counting rows, so the head's
    # rows stay on the device that holds them (no all-to-all). Same loss as G = 1: every
    # counting row is in its group's bucket; only the summation order differs.
    g = layers.batch_shards(b)
    ng = n // g
    w = weights.reshape(g, ng)
    k_t, k_n = jax.random.split(rng)
    t = jax.random.randint(k_t, (mul, n), t_min, num_t)
    noise = jax.random.normal(k_n, (mul, n, c), jnp.float32)
    t = t.reshape(mul, g, ng).swapaxes(0, 1)                        # [G, mul, ng]
    noise = noise.reshape(mul, g, ng, c).swapaxes(0, 1)             # [G, mul, ng, C]
    zf, xf = z.reshape(g, ng, -1), target.reshape(g, ng, c).astype(jnp.float32)

    def run(k, w, zf, xf, t, noise):
      rows = jnp.argsort(w <= 0, axis=1, stable=True)[:, :k]        # [G, k] counting first
      take = lambda a: jnp.take_along_axis(a, rows[..., None], axis=1)
      rz, rx = take(zf), take(xf)                                    # [G, k, .]
      rt = jnp.take_along_axis(t, rows[:, None], axis=2)             # [G, mul, k]
      rn = jnp.take_along_axis(noise, rows[:, None, :, None], axis=2)
      tile = lambda a: jnp.broadcast_to(a[:, None], (g, mul) + a.shape[1:])
      flat = lambda a: layers.constrain_batch(a.reshape((g * mul * k,) + a.shape[3:]))
      rz, rx = flat(tile(rz)), flat(tile(rx))
      rt, rn = flat(rt), flat(rn)
      x_t = self.train_diffusion.q_sample(rx, rt, rn)
      out = self.diffusion_net(variables, x_t, self.train_diffusion.model_timesteps(rt), rz)
      terms = self.train_diffusion.training_losses(out, rx, x_t, rt, rn)
      per_row = terms["loss"].reshape(g, mul, k).mean(1)            # [G, k]
      rw = jnp.take_along_axis(w, rows, axis=1)
      per_row = jnp.where(rw > 0, per_row, 0.0)
      full = jnp.zeros((g, ng), jnp.float32).at[jnp.arange(g)[:, None], rows].add(per_row)
      return (rw * per_row).sum(), full

    sizes = bucket_sizes(ng, self.diffusion_buckets)
    loss, per_tok = bucketed((w > 0).sum(1).max(), sizes, run, w, zf, xf, t, noise)
    return loss, per_tok.reshape(b, l)

  def token_regression_loss(self, variables, z, target, weights):
    """sum(weights * per-token MSE of the linear readout of z) (loss.w_token_regression).

    z: [B, L, Ddec]; target: [B, L, C] clean tokens; weights: [B, L] (the diffusion
    loss's). Returns (loss, per_token [B, L]).
    """
    pred = self._apply(variables, z, method=DREAM.readout_tokens)
    per_tok = jnp.mean(jnp.square(pred - target.astype(jnp.float32)), axis=-1)
    return (weights * per_tok).sum(), per_tok

  def _diffusion_chain(self, respacing: str) -> gaussian.GaussianDiffusion:
    m = self.config.model
    return gaussian.GaussianDiffusion.create(
        respacing, noise_schedule=m.noise_schedule, diffusion_steps=m.num_train_timesteps,
        prediction=m.diffusion_prediction, loss_space=m.diffusion_loss_space)

  def sample_diffusion(self, num_steps: Optional[str] = None):
    key = str(num_steps or self.config.model.num_sampling_steps)
    if key not in self._sample_diffusions:
      self._sample_diffusions[key] = self._diffusion_chain(key)
    return self._sample_diffusions[key]

  def diffusion_sample(self, variables, z, rng, *, temperature=1.0, cfg_scale=None,
                       num_steps: Optional[str] = None):
    """Samples clean tokens [N, C] for conditions z [N, Ddec] with the respaced chain.

    The predicted x0 is clipped to [-c, c] only when `config.sampling.clip_denoised` is set
    (None in paper configs, as the reference; small pixel-token runs set 1.0, see demo.py).

    With `cfg_scale`, z holds the conditional rows then the unconditional rows ([2N, Ddec]);
    both halves share x_t and the noise, the guided eps is used for both, the variance is
    not guided (MAR `forward_with_cfg`); the result is the conditional half [N, C].
    """
    from dream_jax.models import diffloss
    diff = self.sample_diffusion(num_steps)
    net = functools.partial(self.diffusion_net, variables)
    out = diffloss.sample_tokens(net, z, rng, temperature=temperature, cfg_scale=cfg_scale,
                                 diffusion=diff, token_dim=self.spec.token_dim,
                                 clip_denoised=self.clip_denoised)
    return out if cfg_scale is None else out[: z.shape[0] // 2]


def weight_decay_mask(params, config):
  """True where AdamW decays, reproducing the reference by MEANING.

  The reference exempts parameters whose names end in `.bias`, 1-D parameters (LayerNorm /
  BatchNorm scales) and the whole diffusion head, and therefore DOES decay the scalar logit
  scale, position embeddings, mask token, buffer and token embeddings. Config flags turn the
  decay of the logit scale / embeddings off (deviations from the paper; off in paper configs).
  """
  o = config.optim
  embed_names = {"buffer_embed", "encoder_pos_embed", "decoder_pos_embed", "mask_token",
                 "diffusion_pos_embed", "text_pos_embed", "token_embedding",
                 "positional_embedding", "pos_embed"}

  def decide(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    name = names[-1]
    if "diffloss" in names:
      return False
    if name == "logit_scale":
      return bool(o.decay_logit_scale)
    if name in embed_names:
      return bool(o.decay_embeddings)
    if name == "bias" or np.ndim(leaf) == 1:
      return False
    return True

  return jax.tree_util.tree_map_with_path(decide, params)
