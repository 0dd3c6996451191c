"""DREAM's loss reductions (docs/DESIGN.md section 2), written to match the official code.

  L = w_diffusion * L_diffusion + w_contrastive * L_contrastive   (paper: 1.0, 0.005)

* L_contrastive: symmetric InfoNCE over the GLOBAL batch, logits exp(logit_scale) * cos.
  Only samples with at least 25% visible tokens contribute. An excluded sample is removed as
  a query (its image->text row and text->image row do not count) and as an image negative
  (its column of the text->image logits is set to -1e9); its caption stays a negative for
  the image queries. Mean over contributing samples, 0 when none contributes.
* L_diffusion: groups are fixed slices of `group_size` samples. A group's gate is on when its
  realised mask ratio is >= 0.5; the group's term is the mean of the per-token loss over its
  masked tokens; L = mean over ALL groups of gate * term (a gated-off group adds 0 and stays
  in the denominator).
All denominators are safe (no 0/0): a NaN gradient at weight 0 would still be a NaN.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def clip_loss(img_emb, txt_emb, scale, contributes):
  """Filtered symmetric InfoNCE.

  Args:
    img_emb, txt_emb: [B, E] L2-normalised float32 (global batch).
    scale: scalar, exp(logit_scale) (already clamped if configured).
    contributes: [B] bool.
  Returns:
    (loss scalar, contributing fraction scalar = count / B).
  """
  b = img_emb.shape[0]
  c = contributes.astype(bool)
  img, txt = img_emb.astype(jnp.float32), txt_emb.astype(jnp.float32)
  logits = scale * (img @ txt.T)                                                  # [img, txt]
  labels = jnp.arange(b)
  # image -> text: every caption stays a candidate.
  i2t = jax.nn.log_softmax(logits, axis=1)[labels, labels]
  # text -> image: excluded images are removed as negatives. Its own [txt, img] product
  # (not logits.T): with batch-sharded rows, a transpose would move the B x B logits between
  # devices (an all-to-all); a second B x B x E matmul costs ~nothing.
  t2i_logits = jnp.where(c[None, :], scale * (txt @ img.T), -1e9)                # [txt, img]
  t2i = jax.nn.log_softmax(t2i_logits, axis=1)[labels, labels]
  per_sample = -0.5 * (i2t + t2i)
  per_sample = jnp.where(c, per_sample, 0.0)
  count = c.sum()
  loss = per_sample.sum() / jnp.maximum(count, 1).astype(jnp.float32)
  return loss, count.astype(jnp.float32) / b


def group_mask_ratio(mask, group_size: int):
  """Realised mask ratio per group: mask [B, L] bool -> [G] float32."""
  b, l = mask.shape
  return mask.reshape(b // group_size, group_size * l).astype(jnp.float32).mean(axis=1)


def diffusion_token_weights(mask, group_size: int, min_ratio: float):
  """Per-token weights so that sum(w * per_token_loss) is the grouped, gated diffusion loss.

  Args:
    mask: [B, L] bool, True = masked (loss counts only there).
    group_size: samples per group (fixed slices of the global batch).
    min_ratio: groups with realised mask ratio below this are gated off (paper 0.5).
  Returns:
    (weights [B, L] float32, gate [G] bool).
  """
  b, l = mask.shape
  g = b // group_size
  m = mask.reshape(g, group_size * l).astype(jnp.float32)
  gate = m.mean(axis=1) >= min_ratio
  denom = jnp.maximum(m.sum(axis=1), 1.0) * g
  w = m * jnp.where(gate, 1.0, 0.0)[:, None] / denom[:, None]
  return w.reshape(b, l), gate


def clip_contributes(mask, max_mask_ratio: float):
  """[B] bool: the sample's realised mask ratio is <= max_mask_ratio (>= 25% visible)."""
  return mask.astype(jnp.float32).mean(axis=1) <= max_mask_ratio + 1e-6
