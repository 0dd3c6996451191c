"""Scanned blocks (model.scan_layers) and remat policies (model.remat) compute the same
function as the unrolled blocks, on parameters converted by `dream.convert_layout`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.models import layers
from dream_jax.models.dream import block_stacks, convert_layout
from dream_jax.train.components import build_model as DreamModel
from tests.helpers import model_config as tiny_config

DEPTHS = dict(depth=2, dec_depth=3, aligner_depth=2)


def config(**model):
  c = tiny_config(**DEPTHS, **model).copy_and_resolve_references()
  c.text.layers = 2
  c.text.small_layers = 2
  return c


def inputs(spec, b=4):
  k = jax.random.split(jax.random.key(1), 4)
  tokens = jax.random.normal(k[0], (b, spec.seq_len, spec.token_dim))
  visible = jax.random.uniform(k[1], (b, spec.seq_len)) < 0.6
  ids = jax.random.randint(k[2], (b, spec.text_ctx), 1, spec.text_vocab)
  eot = jnp.full((b,), spec.text_ctx - 1, jnp.int32)
  cond = dict(ids=jax.random.randint(k[3], (b, spec.cond_len), 1, spec.text_vocab))
  return tokens, visible, ids, eot, cond


def scalar(model, params, batch_stats, args):
  """Every part once (DREAM.__call__, BatchNorm in training mode) -> one scalar."""
  (emb, temb, out), _ = model.module.apply(dict(params=params, batch_stats=batch_stats),
                                           *args, mutable=["batch_stats"])
  return (emb * jnp.arange(emb.size).reshape(emb.shape) / emb.size).sum() + (
      temb ** 3).sum() + jnp.square(out).mean()


def test_remat_names_and_old_bool_configs():
  assert layers.remat_policy_name(True) == "full"
  assert layers.remat_policy_name(False) == "none"
  assert layers.remat_policy_name("dots") == "dots"
  with pytest.raises(ValueError, match="model.remat"):
    layers.remat_policy_name("some")


def test_batch_axes_agree_with_the_trainer_mesh():
  from dream_jax.train import sharding
  assert layers.BATCH_AXES == sharding.BATCH_AXES


def test_layout_conversion_round_trip_and_tree():
  unrolled = DreamModel(config())
  scanned = DreamModel(config(scan_layers=True))
  p = unrolled.init(jax.random.key(0))["params"]
  stacked = convert_layout(p, scanned.spec, scanned=True)
  want = jax.eval_shape(scanned.init, jax.random.key(0))["params"]
  assert jax.tree.structure(stacked) == jax.tree.structure(want)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), stacked, want)
  assert {name for _, name, _ in block_stacks(scanned.spec)} == {
      "encoder_blocks", "text_aligner", "decoder_blocks", "resblocks", "blocks"}
  # Block 1 of the decoder is row 1 of the stacked leaves.
  np.testing.assert_array_equal(
      stacked["decoder_blocks"]["layers"]["block"]["mlp"]["fc1"]["kernel"][1],
      p["decoder_blocks_1"]["mlp"]["fc1"]["kernel"])
  back = convert_layout(stacked, scanned.spec, scanned=False)
  assert jax.tree.structure(back) == jax.tree.structure(p)
  jax.tree.map(np.testing.assert_array_equal, back, p)


@pytest.fixture(scope="module")
def reference():
  """Value and gradients of the unrolled model without remat (compiled once)."""
  model = DreamModel(config())
  v = model.init(jax.random.key(0))
  args = inputs(model.spec)
  val, g = jax.jit(jax.value_and_grad(lambda q: scalar(model, q, v["batch_stats"], args)))(
      v["params"])
  return v, args, val, g


@pytest.mark.parametrize("scan,remat", [(True, "none"), (True, "dots"), (False, "full")])
def test_same_value_and_gradients(reference, scan, remat):
  v, args, val_ref, g_ref = reference
  model = DreamModel(config(scan_layers=scan, remat=remat))
  p = convert_layout(v["params"], model.spec, scanned=True) if scan else v["params"]
  f = jax.jit(jax.value_and_grad(lambda q: scalar(model, q, v["batch_stats"], args)))
  val, g = f(p)
  np.testing.assert_allclose(val, val_ref, rtol=1e-6)
  if scan:
    g = convert_layout(g, model.spec, scanned=False)
  assert jax.tree.structure(g) == jax.tree.structure(g_ref)
  gmax = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_ref))
  assert gmax > 0
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * gmax)
