"""Conditioning: the shared text-tower pass (clip_tower) and the precomputed empty-caption
features (frozen encoders) give what the per-step recomputation gave, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.tokenizers import first_eot_position
from tests.helpers import train_config


def _ids_and_drop(comp, b=6):
  ids = comp.tokenize([f"a large red circle {w}" for w in ("left", "right", "top", "", "at",
                                                          "center")][:b])
  drop = jnp.asarray([True, False, True, False, False, True][:b])
  return {k: jnp.asarray(v) for k, v in ids.items()}, drop


@pytest.mark.slow
def test_clip_tower_condition_shares_the_tower_pass_exactly():
  """Old way: the tower re-run on the caption-dropped ids. New way: one pass on the true ids
  (shared with the contrastive loss), dropped rows from the empty caption's one-row pass."""
  from dream_jax.train.components import Components
  comp = Components(train_config(**{"text.cond_encoder": "clip_tower"}))
  model, text = comp.model, comp.conditioning
  v = jax.jit(model.init)(jax.random.key(0))
  batch, drop = _ids_and_drop(comp)
  empty = jnp.asarray(comp.empty["clip_ids"])

  def old(params):
    var = dict(v, params=params)
    ids = jnp.where(drop[:, None], empty, batch["clip_ids"])
    eot = jnp.asarray(first_eot_position(ids, comp.eot_id), jnp.int32)
    feats = model.embed_text(var, ids, eot)[1]
    return model.condition(var, {"mask": ids != 0}, text_feats=feats)

  def new(params):
    var = dict(v, params=params)
    _, feats = text.embed_text(var, batch["clip_ids"])
    return text.condition(var, {}, batch, drop=drop, text_feats=feats)[0]

  np.testing.assert_allclose(new(v["params"]), old(v["params"]), rtol=1e-5, atol=1e-6)
  assert not np.allclose(new(v["params"])[0], new(v["params"])[1])   # rows differ
  w = jax.random.normal(jax.random.key(1), old(v["params"]).shape)
  g_old = jax.grad(lambda p: (old(p) * w).sum())(v["params"])
  g_new = jax.grad(lambda p: (new(p) * w).sum())(v["params"])
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_old)):   # f32 rounding only
    assert np.abs(np.asarray(a) - b).max() <= 1e-5 * max(np.abs(np.asarray(b)).max(), 1e-3)
  _, ctx_mask = text.condition(v, {}, batch, drop=drop)
  np.testing.assert_array_equal(ctx_mask, jnp.where(drop[:, None], empty, batch["clip_ids"]) != 0)


def test_frozen_empty_caption_features_are_computed_once_and_equal_the_inline_ones():
  """t5 (tiny random): init_frozen adds the empty caption's features; conditioning with them
  equals computing them inside the step (the frozen dict without them)."""
  from dream_jax.train.components import Components
  c = train_config(**{"text.cond_encoder": "t5", "text.tiny_random": True})
  comp = Components(c)
  text = comp.conditioning
  frozen = comp.init_frozen()
  assert set(frozen) == {"vae", "text", "empty_cond"}
  e = comp.empty
  inline = text.frozen_encoder.features(frozen["text"], jnp.asarray(e["cond_ids"]),
                                        jnp.asarray(e["cond_mask"]))
  np.testing.assert_allclose(frozen["empty_cond"], inline, rtol=1e-6, atol=1e-6)
  v = jax.jit(comp.model.init)(jax.random.key(0))
  batch, drop = _ids_and_drop(comp)
  without = {k: frozen[k] for k in ("vae", "text")}
  a, ma = text.condition(v, frozen, batch, drop=drop)
  b, mb = text.condition(v, without, batch, drop=drop)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ma, mb)
