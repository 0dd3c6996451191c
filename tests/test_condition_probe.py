"""tools/condition_probe: the diagnostic that tells whether z depends on the image/caption."""
import jax
import numpy as np
import pytest

from tests.test_train import tiny_config


@pytest.mark.parametrize("readout", ["mse", "diffusion"])
def test_probe_trains_and_measures_z(readout):
  from dream_jax.tools.condition_probe import layer_names, make_probe
  c = tiny_config()
  params, opt, step_fn, eval_fn, (train, held_out) = make_probe(c, readout, 0.75)
  r0 = {k: float(v) for k, v in eval_fn(params, held_out).items()}
  assert np.isfinite(list(r0.values())).all() and r0["spread"] > 0
  # Per-layer report: the text condition and every decoder branch, all sample-dependent at init.
  depth = c.model.dec_depth
  names = layer_names(depth)
  assert len(names) == 3 + 3 * depth and names[0] == "ctx" and names[-1] == "decoder_norm"
  assert sorted(k for k in r0 if k.startswith("layers/")) == sorted(
      f"layers/{n}/{m}" for n in names for m in ("spread", "rms"))
  for n in ("ctx", "block0.self_attn", "block0.cross_attn", "decoder_norm"):
    assert r0[f"layers/{n}/spread"] > 1e-3 and r0[f"layers/{n}/rms"] > 0, n
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
  for k in r:
    if k.startswith("layers/") and k.endswith("/spread"):
      assert float(r[k]) < 1e-5, k


def test_probe_rejects_a_ratio_outside_0_1():
  from dream_jax.tools.condition_probe import make_probe
  with pytest.raises(ValueError, match="ratio"):
    make_probe(tiny_config(), "mse", 1.0)


def test_probe_t_min_is_for_the_diffusion_readout():
  from dream_jax.tools.condition_probe import make_probe
  with pytest.raises(ValueError, match="t_min"):
    make_probe(tiny_config(), "mse", 0.75, t_min=900)
  params, opt, step_fn, eval_fn, (train, held_out) = make_probe(tiny_config(), "diffusion",
                                                                 0.75, t_min=900)
  full = make_probe(tiny_config(), "diffusion", 0.75)
  # Same initial parameters, same evaluation draws: only the timesteps differ.
  a, b = eval_fn(params, held_out), full[3](full[0], held_out)
  assert np.isfinite(float(a["own"])) and float(a["own"]) != float(b["own"])


def test_head_probe_trains_the_head_alone_on_oracle_z():
  from dream_jax.tools.condition_probe import make_head_probe
  c = tiny_config()
  params, opt, step_fn, eval_fn, (train, held_out) = make_head_probe(c)
  r0 = {k: float(v) for k, v in eval_fn(params, held_out).items()}
  assert sorted(r0) == ["err", "err_bg", "err_fg", "good", "loss"]
  assert np.isfinite(list(r0.values())).all() and 0.0 <= r0["good"] <= 1.0
  # Only the head is trained: its parameter tree is the model's 'diffloss' subtree.
  assert set(params) == {"diffloss"}
  assert "cond_embed" in params["diffloss"] and "decoder_embed" not in params["diffloss"]
  for i in range(2):
    new, opt, loss = step_fn(params, opt, next(train), jax.random.key(i))
    assert np.isfinite(float(loss))
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                     params, new)
    params = new
  assert any(jax.tree_util.tree_leaves(changed))
  r1 = {k: float(v) for k, v in eval_fn(params, held_out).items()}
  assert r1["loss"] != r0["loss"] and r1["err"] != r0["err"]
