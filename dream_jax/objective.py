"""The DREAM training objective: one pure function of (params, batch, rng, mask centre).

Inside the jitted step, for a global batch (docs/DESIGN.md sections 2 and 6):
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

import jax
import jax.numpy as jnp

from dream_jax import losses, masking
from dream_jax.conditioning import Conditioning
from dream_jax.image_tokens import ImageTokens
from dream_jax.models.api import DreamModel

STREAMS = ("mask", "dropout_enc", "dropout_cond", "dropout_dec", "diffusion", "caption_drop",
           "vae")


def split_streams(rng):
  """Named independent keys; adding a stream never changes the others."""
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(STREAMS)}


class DreamObjective:
  """`loss_fn(params, batch_stats, frozen, batch, rng, mask_center)` for the trainer.

  Args (constructor):
    model: DreamModel; config: the run config (loss and masking sections are read).
    conditioning: the run's `Conditioning` (caption dropout, empty caption, text tower).
    image_tokens: images -> tokens.
  Frozen parameters: {'vae': ..., 'text': ..., 'empty_cond'?} (see conditioning.py).
  """

  def __init__(self, model: DreamModel, config, *, conditioning: Conditioning,
               image_tokens: ImageTokens):
    self.model, self.config = model, config
    self.conditioning = conditioning
    self.image_tokens = image_tokens

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
    # A fixed mask ratio fixes every sample's visible count: static lengths, no buckets.
    n_vis = masking.static_visible_count(cfg.masking, l)
    enc = model.encode_image(variables, tokens, ~mask, train=True, rng=k["dropout_enc"],
                             num_keep=None if model.encoder_path == "masked" else n_vis)
    metrics = dict(mask_center=jnp.asarray(mask_center, jnp.float32),
                   mask_ratio=mask.mean(dtype=jnp.float32))
    total = jnp.zeros((), jnp.float32)
    new_stats = enc.batch_stats
    text = self.conditioning
    text_feats = None   # the tower's features of the true captions, shared with the condition

    if lc.w_contrastive > 0:
      txt, text_feats = text.contrastive_text(variables, batch["clip_ids"])
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
      drop = text.drop_mask(k["caption_drop"], b)
      ctx, ctx_mask = text.condition(variables, frozen, batch, drop=drop, train=True,
                                     rng=k["dropout_cond"], text_feats=text_feats)
      z = model.decode(variables, enc.hidden, enc.valid, ctx, ctx_mask, train=True,
                       rng=k["dropout_dec"])
      weights, gate = losses.diffusion_token_weights(mask, cfg.masking.group_size,
                                                     lc.diff_min_mask_ratio)
      if "valid" in batch:
        weights = weights * batch["valid"][:, None]
      l_diff, _ = model.diffusion_loss(variables, z, tokens, weights, k["diffusion"],
                                       max_per_sample=None if n_vis is None else l - n_vis)
      total = total + lc.w_diffusion * l_diff
      if lc.w_token_regression > 0:
        l_reg, _ = model.token_regression_loss(variables, z, tokens, weights)
        total = total + lc.w_token_regression * l_reg
        metrics["loss_token_regression"] = l_reg
      metrics.update(loss_diffusion=l_diff, share_diffusion=gate.mean(dtype=jnp.float32),
                     caption_drop=drop.mean(dtype=jnp.float32))
    metrics["loss"] = total
    return total, (new_stats, metrics)
