"""The sampling benchmark's analytic matmul FLOPs (benchmarks/sampling.py `step_flops`),
recomputed independently: every `dot_general` in the traced jaxpr of one decoding step
(loop bodies multiplied by their trip counts), at the anchor shapes with one bucket, so
that no `lax.switch` branch has to be chosen."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import sampling as bs  # noqa: E402


def dot_flops(jaxpr) -> float:
  """2 * M * N * K * batch of every dot_general, through sub-jaxprs (scan: x length)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      contract = np.prod([lhs[i] for i in lc])
      out = np.prod(eqn.outvars[0].aval.shape)
      total += 2.0 * out * contract
      continue
    if eqn.primitive.name in ("while", "cond"):
      raise AssertionError(f"{eqn.primitive.name} has no static trip count / branch here")
    mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          total += mult * dot_flops(inner)
        elif hasattr(sub, "eqns"):
          total += mult * dot_flops(sub)
  return total


@pytest.mark.parametrize("guided", [True, False])
def test_step_flops_equal_the_traced_dots(guided):
  from dream_jax.sampling import mar
  from dream_jax.train.components import build_model
  c = bs.config_for("anchor")
  c.model.encoder_buckets = 1
  c.model.diffusion_buckets = 1
  model = build_model(c)
  opts = mar.DecodeOptions(16, "3", "linear", guided, 1, 1)
  dec = mar.MarDecoder(model, opts)
  variables = jax.eval_shape(model.init, jax.random.key(0))
  b, lc, dd = 4, model.spec.cond_len, model.spec.dec_width
  rows = 2 * b if guided else b
  state = jax.eval_shape(lambda: mar.init_state(jax.random.key(0), b, dec.L, dec.C))
  cond = mar.Cond(jax.ShapeDtypeStruct((rows, lc, dd), jnp.float32),
                  jax.ShapeDtypeStruct((rows, lc), bool))
  for s, shared in ((0, 1), (5, 1), (15, 1), (0, 2), (3, 4)):   # shared: SAD's step 0
    fn = lambda v, st, cd: dec.step(v, st, cd, jax.random.key(1), 1.0, dec.tables(3.0), s,
                                    shared=shared)
    traced = dot_flops(jax.make_jaxpr(fn)(variables, state, cond).jaxpr)
    want = sum(bs.step_flops(dec, b, s, shared=shared).values())
    assert traced == pytest.approx(want, rel=1e-9), (s, shared)


def test_sad_and_best_of_k_totals_compose_from_steps():
  from dream_jax.sampling import mar
  from dream_jax.train.components import build_model
  c = bs.config_for("anchor")
  model = build_model(c)
  dec = mar.MarDecoder(model, mar.options_from_config(c))
  p, k, t = 16, 4, 4
  plain = bs.analytic_flops(dec, "plain", p, k, t)
  sad = bs.analytic_flops(dec, "sad", p, k, t)
  bok = bs.analytic_flops(dec, "best_of_k", p, k, t)
  # Decoder work is per image-step: SAD runs K*(T-1) + 1 + (N - T) of them per prompt
  # (step 0 once per prompt: its candidates are still identical), best-of-K K*N.
  # The text's keys/values are computed once per program phase (XLA hoists them out of the
  # loops): plain 1 (P rows), SAD 3 (the shared step: P, candidates: K*P, winners: P).
  n = dec.opts.num_steps
  kv = bs.decoder_flops(dec, 2)["ctx_kv"]
  assert kv > 0
  assert sad["decoder"] - (2 + k) * p * kv == pytest.approx(
      (plain["decoder"] - p * kv) * (k * (t - 1) + 1 + n - t) / n)
  assert bok["decoder"] == pytest.approx(plain["decoder"] * k)
  assert bok["head"] > k * plain["head"] * 0.99 and sad["head"] < bok["head"]
  for d in (plain, sad, bok):
    assert d["total"] == pytest.approx(d["encoder"] + d["decoder"] + d["head"])
