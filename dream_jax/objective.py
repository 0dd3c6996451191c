"""The DREAM training objective: one pure function of (params, batch, rng, mask centre).

Inside the jitted step, for a global batch (DESIGN.md sections 2 and 6):
  1. image -> tokens (identity patches, or the frozen VAE posterior sampled and scaled);
  2. Masking Warmup: one ratio per group ~ truncated N(centre, std), per-sample random order,
     first ceil(L r) positions masked;
  3. encoder on buffer + visible tokens -> mean-pool -> BN-MLP image embedding (train mode:
     batch statistics over the global batch, running statistics updated);
  4. CLIP text tower on the TRUE caption -> filtered symmetric InfoNCE (>= 25% visible);
  5. generation condition: 10% of captions replaced by the empty caption (CFG), frozen or
     trainable text encoder -> aligner -> decoder -> z;
  6. diffusion loss on the masked tokens of groups whose ratio >= 0.5, 4 draws per token.
Returns the weighted sum and metrics. Random streams are derived from one key by name.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from dream_jax import losses, masking
from dream_jax.image_tokens import ImageTokens
from dream_jax.models.api import DreamModel

STREAMS = ("mask", "dropout_enc", "dropout_cond", "dropout_dec", "diffusion", "caption_drop",
           "vae")


def split_streams(rng):
  """Named independent keys; adding a stream never changes the others."""
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(STREAMS)}


class FrozenCond:
  """The frozen generation-condition encoder (t5 / minilm), or None for trainable ones."""

  def __init__(self, config):
    self.kind = config.text.cond_encoder
    self.encoder = None
    if self.kind in ("t5", "minilm"):
      from dream_jax.pretrained.frozen import FrozenTextEncoder
      self.encoder = FrozenTextEncoder(config.text)
      self.tiny_random = config.text.tiny_random

  def init_frozen(self, rng=None):
    if self.encoder is None:
      return {}
    if self.tiny_random:
      return self.encoder.init_params(rng if rng is not None else jax.random.key(1))
    return self.encoder.load_params()

  def tokenize(self, texts):
    return self.encoder.tokenize(texts)

  def features(self, frozen, ids, mask):
    return jax.lax.stop_gradient(self.encoder.apply(frozen, ids, mask))


class DreamObjective:
  """`loss_fn(params, batch_stats, frozen, batch, rng, mask_center)` for the trainer.

  Args (constructor):
    model: DreamModel; config: the run config.
    eot_id: the CLIP tokenizer's end-of-text id (pooling position).
    uncond: the empty caption, tokenized like a batch of 1: {'clip_ids': [1,ctx],
      'cond_ids': [1,Lc], 'cond_mask': [1,Lc]} (cond_* for frozen or 'small' encoders).
  Frozen parameters: {'vae': ..., 'text': ...} (empty dicts when not used).
  """

  def __init__(self, model: DreamModel, config, *, eot_id: int, uncond: dict,
               image_tokens: Optional[ImageTokens] = None,
               frozen_cond: Optional[FrozenCond] = None):
    self.model, self.config = model, config
    self.eot_id = eot_id
    self.uncond = {k: jnp.asarray(v) for k, v in uncond.items()}
    self.image_tokens = image_tokens or ImageTokens(config)
    self.frozen_cond = frozen_cond or FrozenCond(config)

  # ------------------------------------------------------------- condition
  def cond_inputs(self, frozen, batch, drop=None):
    """Generation-condition inputs (dict for `model.condition`), with caption dropout.

    drop: [B] bool or None; dropped samples get the empty caption.
    """
    kind = self.model.spec.cond_encoder
    sel = lambda a, u: a if drop is None else jnp.where(
        drop.reshape((-1,) + (1,) * (a.ndim - 1)), u.astype(a.dtype), a)
    if kind in ("t5", "minilm"):
      if "cond_embeddings" in batch:
        feats, mask = batch["cond_embeddings"].astype(jnp.float32), batch["cond_mask"]
      else:
        feats = self.frozen_cond.features(frozen.get("text"), batch["cond_ids"],
                                          batch["cond_mask"])
        mask = batch["cond_mask"]
      if drop is not None:
        u_feat = self.frozen_cond.features(frozen.get("text"), self.uncond["cond_ids"],
                                           self.uncond["cond_mask"])
        feats, mask = sel(feats, u_feat), sel(mask, self.uncond["cond_mask"])
      return dict(features=feats, mask=mask)
    if kind == "small":
      ids = batch.get("cond_ids", batch["clip_ids"])
      mask = batch.get("cond_mask", ids != 0)
      return dict(ids=sel(ids, self.uncond["cond_ids"]), mask=sel(mask, self.uncond["cond_mask"]))
    # clip_tower: ids of the CLIP tokenizer; features come from the tower itself.
    ids = sel(batch["clip_ids"], self.uncond["clip_ids"])
    return dict(ids=ids, mask=ids != 0)

  def condition(self, params_vars, frozen, batch, *, drop=None, train=False, rng=None):
    """(ctx [B,Lc,Ddec], ctx_mask [B,Lc])."""
    cond = self.cond_inputs(frozen, batch, drop)
    text_feats = None
    if self.model.spec.cond_encoder == "clip_tower":
      ids = cond.pop("ids")
      _, text_feats = self.model.embed_text(params_vars, ids,
                                            self.model.eot_positions(ids, self.eot_id))
    ctx = self.model.condition(params_vars, cond, train=train, rng=rng, text_feats=text_feats)
    return ctx, cond["mask"]

  # ------------------------------------------------------------------ loss
  def __call__(self, params, batch_stats, frozen, batch, rng, mask_center):
    cfg, model = self.config, self.model
    lc = cfg.loss
    k = split_streams(rng)
    variables = {"params": params, "batch_stats": batch_stats}
    tokens = self.image_tokens.to_tokens(frozen.get("vae"), batch, k["vae"])
    b, l, _ = tokens.shape
    m = masking.sample_masks(k["mask"], b, l, mask_center, cfg.masking)
    mask = m["mask"]
    enc = model.encode_image(variables, tokens, ~mask, train=True, rng=k["dropout_enc"])
    metrics = dict(mask_center=jnp.asarray(mask_center, jnp.float32),
                   mask_ratio=mask.mean(dtype=jnp.float32))
    total = jnp.zeros((), jnp.float32)
    new_stats = enc.batch_stats

    if lc.w_contrastive > 0:
      eot = model.eot_positions(batch["clip_ids"], self.eot_id)
      txt, _ = model.embed_text(variables, batch["clip_ids"], eot)
      contributes = losses.clip_contributes(mask, lc.clip_max_mask_ratio)
      valid = batch.get("valid")
      if valid is not None:
        contributes = contributes & valid
      scale = model.logit_scale(variables)
      l_clip, frac = losses.clip_loss(enc.embedding, txt, scale, contributes)
      total = total + lc.w_contrastive * l_clip
      metrics.update(loss_contrastive=l_clip, share_contrastive=frac, logit_scale=scale,
                     negatives=jnp.asarray(b, jnp.float32))

    if lc.w_diffusion > 0:
      drop = jax.random.bernoulli(k["caption_drop"], lc.caption_drop, (b,))
      ctx, ctx_mask = self.condition(variables, frozen, batch, drop=drop, train=True,
                                     rng=k["dropout_cond"])
      z = model.decode(variables, enc.hidden, enc.valid, ctx, ctx_mask, train=True,
                       rng=k["dropout_dec"])
      weights, gate = losses.diffusion_token_weights(mask, cfg.masking.group_size,
                                                     lc.diff_min_mask_ratio)
      if "valid" in batch:
        weights = weights * batch["valid"][:, None]
      l_diff, _ = model.diffusion_loss(variables, z, tokens, weights, k["diffusion"])
      total = total + lc.w_diffusion * l_diff
      if lc.w_token_regression > 0:
        l_reg, _ = model.token_regression_loss(variables, z, tokens, weights)
        total = total + lc.w_token_regression * l_reg
        metrics["loss_token_regression"] = l_reg
      metrics.update(loss_diffusion=l_diff, share_diffusion=gate.mean(dtype=jnp.float32),
                     caption_drop=drop.mean(dtype=jnp.float32))
    metrics["loss"] = total
    return total, (new_stats, metrics)
