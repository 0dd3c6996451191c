"""bf16-stored Adam moments (`optim.moment_dtype`): the update follows Adam's formula,
recomputed here by hand, with the moments rounded to bf16 after every step; the state is the
same tree as optax's, only with bf16 leaves; a train step runs with it."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dream_jax.train import optim


def _by_hand(grads, b1, b2, eps, dtype):
  """Adam directions of a sequence of gradients, moments stored (rounded) in `dtype`."""
  mu = np.zeros_like(grads[0], np.float32)
  nu = np.zeros_like(grads[0], np.float32)
  rnd = lambda x: np.asarray(jnp.asarray(x, jnp.float32).astype(dtype).astype(jnp.float32))
  out = []
  for t, g in enumerate(grads, start=1):
    m = b1 * mu + (1 - b1) * g
    v = b2 * nu + (1 - b2) * g * g
    out.append((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    mu, nu = rnd(m), rnd(v)
  return out


def test_bf16_moments_follow_adam_with_rounded_state():
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=(7, 5)).astype(np.float32) * 10.0 ** -k for k in range(4)]
  tx = optim.scale_by_adam_stored_as(0.9, 0.95, 1e-8, jnp.bfloat16)
  params = {"w": jnp.zeros((7, 5), jnp.float32)}
  state = tx.init(params)
  assert isinstance(state, optax.ScaleByAdamState)
  assert state.mu["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.bfloat16
  want = _by_hand(grads, 0.9, 0.95, 1e-8, jnp.bfloat16)
  update = jax.jit(tx.update)
  for g, w in zip(grads, want):
    d, state = update({"w": jnp.asarray(g)}, state)
    assert d["w"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(d["w"]), w, rtol=2e-5, atol=1e-6)
  assert int(state.count) == len(grads)


def test_float32_storage_equals_optax_adam():
  """With fp32 storage the same code is optax.scale_by_adam (same tree, same numbers)."""
  rng = np.random.default_rng(1)
  params = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
  ours, ref = optim.scale_by_adam_stored_as(0.9, 0.95, 1e-8, jnp.float32), optax.scale_by_adam(
      b1=0.9, b2=0.95, eps=1e-8)
  s1, s2 = ours.init(params), ref.init(params)
  assert jax.tree.structure(s1) == jax.tree.structure(s2)
  for _ in range(3):
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    d1, s1 = ours.update(g, s1)
    d2, s2 = ref.update(g, s2)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), d1, d2)


def test_config_selects_the_storage_dtype():
  c = ml_collections.ConfigDict(dict(optim=dict(grad_clip=0.0, b1=0.9, b2=0.95, eps=1e-8,
                                                weight_decay=0.0, moment_dtype="bfloat16")))
  state = optim.make_optimizer(c).init({"w": jnp.zeros((2, 2))})
  adam = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "nu"))
          if hasattr(s, "nu")][0]
  assert adam.mu["w"].dtype == jnp.bfloat16 and adam.nu["w"].dtype == jnp.bfloat16
  c.optim.moment_dtype = "float32"
  state = optim.make_optimizer(c).init({"w": jnp.zeros((2, 2))})
  assert jax.tree.leaves(state)[1].dtype == jnp.float32


@pytest.mark.slow
def test_train_step_with_bf16_moments_on_the_fsdp_mesh():
  """One sharded step with bf16 moments: they are bf16, sharded like their parameters, and
  the step moved every parameter by a finite amount (the formula is checked above)."""
  from dream_jax.data import make_dataset
  from dream_jax.train import sharding
  from dream_jax.train.trainer import Trainer
  from tests.helpers import train_config

  c = train_config(**{"optim.moment_dtype": "bfloat16"})
  c.mesh.update(data=4, fsdp=2)
  tr = Trainer(c, devices=jax.devices())
  state = tr.fresh_state()
  before = jax.tree.map(np.asarray, state["params"])
  batch = next(make_dataset(c, "train").iterator())
  with jax.set_mesh(tr.mesh):
    new, m = tr.train_step(state, tr.frozen, sharding.global_batch(tr.mesh, batch))
  assert np.isfinite(float(m["loss"]))
  adam = [x for x in jax.tree.leaves(new["opt_state"], is_leaf=lambda x: hasattr(x, "nu"))
          if hasattr(x, "nu")][0]
  assert {x.dtype for x in jax.tree.leaves((adam.mu, adam.nu))} == {jnp.dtype(jnp.bfloat16)}
  for p, mu in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(adam.mu)):
    assert p.dtype == jnp.float32 and p.sharding.spec == mu.sharding.spec
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(adam.nu))
  moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(new["params"]),
                                                          jax.tree.leaves(before))]
  assert all(np.isfinite(moved)) and np.mean(np.asarray(moved) > 0) > 0.5
