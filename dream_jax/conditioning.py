"""The text side of a DREAM step: caption dropout, the empty caption, frozen text features,
end-of-text positions and the CLIP-tower text embedding, in one place.

`Conditioning(model, eot_id=, empty=, frozen_encoder=, caption_drop=)` is built once per
program by its builder (`train/components.py`); it never tokenizes: the empty caption comes
in as arrays. The objective, the predict functions and the sampler call it; the decode
programs receive closures made from it (`sampling/`).

Inputs (B batch, ctx CLIP context, Lc condition length, Dc frozen encoder width):
  batch    {'clip_ids' [B, ctx] int32, 'cond_ids' [B, Lc] int32, 'cond_mask' [B, Lc] bool}
           (cond_* for the frozen and 'small' encoders; 'cond_embeddings' [B, Lc, Dc] when the
           data pipeline precomputed the frozen features)
  empty    the empty caption tokenized the same way, a batch of one ([1, ...] rows)
  frozen   {'vae', 'text'} frozen parameters, plus 'empty_cond' [1, Lc, Dc] float32: the
           empty caption's frozen features, computed ONCE by `with_empty_features` (not in
           every training step)

Caption dropout (CFG) replaces the generation condition of dropped samples by the empty
caption's; the contrastive loss always sees the true caption.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.tokenizers.base import first_eot_position

FROZEN_KINDS = ("t5", "minilm")


class FrozenCond:
  """The frozen generation-condition encoder (t5 / minilm), or None for trainable ones."""

  def __init__(self, text_cfg):
    self.kind = text_cfg.cond_encoder
    self.encoder = None
    if self.kind in FROZEN_KINDS:
      from dream_jax.pretrained.frozen import FrozenTextEncoder
      self.encoder = FrozenTextEncoder(text_cfg)
      self.tiny_random = text_cfg.tiny_random

  def init_frozen(self, rng=None):
    if self.encoder is None:
      return {}
    if self.tiny_random:
      return self.encoder.init_params(rng if rng is not None else jax.random.key(1))
    return self.encoder.load_params()

  def tokenize(self, texts):
    return self.encoder.tokenize(texts)

  def features(self, text_params, ids, mask):
    """[B, Lc, Dc] float32, no gradient (the encoder is frozen)."""
    return jax.lax.stop_gradient(self.encoder.apply(text_params, ids, mask))


def _select(drop, dropped, kept):
  """Rows of `dropped` ([1, ...] broadcast) where drop [B] is True, else rows of `kept`."""
  if drop is None:
    return kept
  d = drop.reshape((-1,) + (1,) * (kept.ndim - 1))
  return jnp.where(d, dropped.astype(kept.dtype), kept)


class Conditioning:
  """See the module docstring. `model` is a `DreamModel`."""

  def __init__(self, model, *, eot_id: int, empty: dict, caption_drop: float,
               frozen_encoder: Optional[FrozenCond] = None):
    self.model = model
    self.kind = model.spec.cond_encoder
    self.eot_id = int(eot_id)
    self.empty = {k: jnp.asarray(v) for k, v in empty.items()}
    self.caption_drop = float(caption_drop)
    self.frozen_encoder = frozen_encoder

  # ------------------------------------------------------------------ text
  def eot_positions(self, clip_ids) -> jax.Array:
    """[B] int32: the first end-of-text position of each row (the text tower's pooling)."""
    return first_eot_position(clip_ids, self.eot_id).astype(jnp.int32)

  def embed_text(self, variables, clip_ids):
    """(unit embedding [B, E] f32, token features [B, ctx, W]) of the CLIP text tower."""
    return self.model.embed_text(variables, clip_ids, self.eot_positions(clip_ids))

  def text_embedding(self, variables, clip_ids) -> jax.Array:
    """Unit CLIP-tower embeddings [B, E] (contrastive loss, retrieval, the SAD critic); the
    tower runs on the prefix up to the last end-of-text position only (`DreamModel`)."""
    return self.model.text_embedding(variables, clip_ids, self.eot_positions(clip_ids))

  def contrastive_text(self, variables, clip_ids):
    """(unit embedding [B, E], token features [B, ctx, W] or None) for the contrastive loss:
    with the clip_tower condition the features are returned for `condition` to reuse (one
    tower pass per step), else only the embedding is computed, on the text prefix."""
    if self.kind == "clip_tower":
      return self.embed_text(variables, clip_ids)
    return self.text_embedding(variables, clip_ids), None

  # --------------------------------------------------------------- dropout
  def drop_mask(self, rng, batch_size: int) -> jax.Array:
    """[B] bool: the samples whose generation condition is the empty caption (CFG)."""
    return jax.random.bernoulli(rng, self.caption_drop, (batch_size,))

  # ---------------------------------------------------------------- frozen
  def empty_features(self, frozen) -> jax.Array:
    """[1, Lc, Dc] frozen features of the empty caption (precomputed when available)."""
    if "empty_cond" in frozen:
      return frozen["empty_cond"]
    return self.frozen_encoder.features(frozen.get("text"), self.empty["cond_ids"],
                                        self.empty["cond_mask"])

  def with_empty_features(self, frozen: dict) -> dict:
    """`frozen` plus 'empty_cond' (frozen encoders only): computed here, once per program."""
    if self.kind not in FROZEN_KINDS:
      return frozen
    feats = jax.jit(self.frozen_encoder.features)(frozen["text"], self.empty["cond_ids"],
                                                  self.empty["cond_mask"])
    return dict(frozen, empty_cond=np.asarray(feats, np.float32))

  # ------------------------------------------------------------- condition
  def inputs(self, frozen, batch, drop=None) -> dict:
    """Generation-condition inputs for `model.condition`, dropped rows -> empty caption
    (clip_tower: the dropped ids and their padding mask; `condition` adds the features)."""
    e = self.empty
    if self.kind in FROZEN_KINDS:
      mask = batch["cond_mask"]
      if "cond_embeddings" in batch:
        feats = batch["cond_embeddings"].astype(jnp.float32)
      else:
        feats = self.frozen_encoder.features(frozen.get("text"), batch["cond_ids"], mask)
      if drop is not None:
        feats = _select(drop, self.empty_features(frozen), feats)
        mask = _select(drop, e["cond_mask"], mask)
      return dict(features=feats, mask=mask)
    if self.kind == "small":
      ids = batch["cond_ids"] if "cond_ids" in batch else batch["clip_ids"]
      mask = batch["cond_mask"] if "cond_mask" in batch else ids != 0
      return dict(ids=_select(drop, e["cond_ids"], ids), mask=_select(drop, e["cond_mask"], mask))
    # clip_tower: the condition is the tower's token features; the mask is the ids' padding.
    ids = _select(drop, e["clip_ids"], batch["clip_ids"])
    return dict(ids=ids, mask=ids != 0)

  def condition(self, variables, frozen, batch, *, drop=None, train=False, rng=None,
                text_feats=None):
    """(ctx [B, Lc, Ddec], ctx_mask [B, Lc]).

    clip_tower: `text_feats` [B, ctx, W] are the tower's token features of the TRUE ids when
    the caller has them (the contrastive loss ran the tower on them), else computed here.
    Dropped rows take the empty caption's features, computed on one row: the tower is causal
    and row-independent, so this equals running it on the dropped ids, once per step.
    """
    cond = self.inputs(frozen, batch, drop)
    feats = None
    if self.kind == "clip_tower":
      if text_feats is None:
        text_feats = self.embed_text(variables, batch["clip_ids"])[1]
      feats = text_feats
      if drop is not None:
        empty_feats = self.embed_text(variables, self.empty["clip_ids"])[1]
        feats = _select(drop, empty_feats, text_feats)
      cond = dict(mask=cond["mask"])
    ctx = self.model.condition(variables, cond, train=train, rng=rng, text_feats=feats)
    return ctx, cond["mask"]
