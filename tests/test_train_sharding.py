"""One training step on 8 fake devices (data x fsdp = 4 x 2) equals one on a single device:
same initial state, same loss and metrics, same updated params, EMA and BN statistics."""
import jax
import numpy as np
import pytest

from dream_jax.data import make_dataset
from dream_jax.train import sharding
from dream_jax.train.trainer import Trainer
from tests.helpers import train_config as tiny_config

pytestmark = pytest.mark.slow   # slow tier: trains, runs main.py or compiles a sampler


def one_step(config, devices):
  tr = Trainer(config, devices=devices)
  state = tr.fresh_state()
  init = jax.tree.map(np.asarray, state)
  batch = next(make_dataset(config, "train").iterator())
  with jax.set_mesh(tr.mesh):
    new, m = tr.train_step(state, tr.frozen, sharding.global_batch(tr.mesh, batch))
  return tr, init, jax.tree.map(np.asarray, new), jax.device_get(m), new


def test_sharded_step_equals_single_device():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  c1 = tiny_config()
  c8 = tiny_config()
  c8.mesh.update(data=4, fsdp=2)
  _, init1, new1, m1, _ = one_step(c1, jax.devices()[:1])
  tr8, init8, new8, m8, raw8 = one_step(c8, jax.devices())
  # Parameters really are FSDP-sharded on the 8-device mesh (not silently replicated).
  big = [x for x in jax.tree.leaves(raw8["params"]) if x.size >= sharding.FSDP_MIN_SIZE]
  assert big and all("fsdp" in str(x.sharding.spec) for x in big)
  jax.tree.map(np.testing.assert_array_equal, init1, init8)   # init independent of the mesh
  for k in ("loss", "loss_diffusion", "loss_contrastive", "grad_norm", "mask_ratio"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, err_msg=k)
  # Gradients: Adam's first moment after one step is (1 - b1) * clipped gradient, linear in
  # it, so it compares the gradients themselves. fp32 reductions run in a different order
  # on 8 devices: relative error per leaf <= 1e-4 of the leaf's largest gradient.
  mu1, mu8 = first_moment(new1["opt_state"]), first_moment(new8["opt_state"])
  # Biases in front of BatchNorm have a gradient that is 0 in exact arithmetic (BN removes
  # them): there only rounding noise is compared, hence the floor of 1e-7 x the global max.
  gmax = max(float(np.abs(a).max()) for a in jax.tree.leaves(mu1))
  worst = 0.0
  for a, b in zip(jax.tree.leaves(mu1), jax.tree.leaves(mu8)):
    worst = max(worst, float(np.abs(a - b).max() / (np.abs(a).max() + 1e-3 * gmax)))
  print("max gradient difference 8 devices vs 1, relative to the leaf's scale:", worst)
  assert worst <= 1e-4, worst
  # Params: the first Adam step moves a weight by lr * g / (|g| + eps), which flips for
  # gradients near eps = 1e-8, so params agree to within the learning rate and, away from
  # such near-zero gradients, up to the rounding of the update's float32 add: the updates
  # there differ by ~lr * 4e-5 * eps / |g| (< 1e-12), far below one unit in the last place
  # of a weight of size 0.01-1 (1e-9-1e-7), so the sums agree or differ by that one unit
  # (which side of a rounding boundary the exact sum falls depends on the machine).
  # BN statistics (no Adam) agree to 1e-6.
  lr = float(m1["lr"])
  for name in ("params", "ema_params", "batch_stats"):
    err = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new1[name]),
                                                         jax.tree.leaves(new8[name])))
    print(name, "max abs difference", err, "lr", lr)
    tol = 2 * lr if name != "batch_stats" else 1e-6
    assert err <= tol, (name, err, tol)
    if name == "batch_stats":
      continue
    for a, b, g in zip(jax.tree.leaves(new1[name]), jax.tree.leaves(new8[name]),
                       jax.tree.leaves(mu1)):
      away = np.abs(g) > 1e-6
      one_ulp = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32))
      bound = np.maximum(1e-3 * lr, one_ulp)
      assert np.all(np.abs(a - b)[away] <= bound[away]), (
          name, float((np.abs(a - b)[away] / bound[away]).max()))


def first_moment(opt_state):
  """The `mu` tree of optax's ScaleByAdamState inside the chain."""
  for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu")):
    if hasattr(s, "mu"):
      return s.mu
  raise AssertionError("no Adam state found")
