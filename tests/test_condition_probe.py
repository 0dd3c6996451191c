"""tools/condition_probe: the diagnostic that tells whether z depends on the image/caption."""
import jax
import numpy as np
import pytest

from tests.test_train import tiny_config


@pytest.mark.parametrize("readout", ["mse", "diffusion"])
def test_probe_trains_and_measures_z(readout):
  from dream_jax.tools.condition_probe import make_probe
  c = tiny_config()
  params, opt, step_fn, eval_fn, (train, held_out) = make_probe(c, readout, 0.75)
  r0 = {k: float(v) for k, v in eval_fn(params, held_out).items()}
  assert np.isfinite(list(r0.values())).all() and r0["spread"] > 0
  if readout == "mse":
    # z-independent at init (zero readout), then 2 steps lower the loss.
    assert r0["own"] == r0["other"]
  losses = []
  for i in range(2):
    params, opt, loss = step_fn(params, opt, next(train), jax.random.key(i))
    losses.append(float(loss))
  r1 = {k: float(v) for k, v in eval_fn(params, held_out).items()}
  assert np.isfinite(losses).all() and r1["own"] != r0["own"]
  # other z = own z when every sample is the same example (shared masked positions).
  same = {k: np.repeat(np.asarray(x)[:1], len(x), axis=0) for k, x in held_out.items()}
  r = eval_fn(params, same)
  np.testing.assert_allclose(float(r["other"]), float(r["own"]), rtol=1e-6)
  assert float(r["spread"]) < 1e-5


def test_probe_rejects_a_ratio_outside_0_1():
  from dream_jax.tools.condition_probe import make_probe
  with pytest.raises(ValueError, match="ratio"):
    make_probe(tiny_config(), "mse", 1.0)
