"""Mini-GenEval evaluator (formerly 'fidelity'): reference rows (checker ceiling and chance) and an end-to-end run with
the sampler's predict functions on a tiny random model (the numbers are not meaningful)."""
import json
import os

import jax
import pytest

from dream_jax import sampling
from configs import evaluators as ev_configs
from dream_jax.evaluators import EvalContext, build_evaluator
from dream_jax.evaluators import geneval as fidelity
from dream_jax.train.components import Components
from tests.helpers import sampling_config as _config


def test_reference_rows_ceiling_above_chance():
  c = _config()
  ref = fidelity.reference_rows(c, 24)
  assert ref["real/color_ok"] >= 0.9 and ref["real/all_ok"] >= 0.7
  assert ref["chance/all_ok"] < ref["real/all_ok"]
  assert ref["chance/color_ok"] < 0.6


def test_single_object_prompts_and_their_reference_rows():
  """max_objects=1: every prompt names one object; the real images drawn the same way pass."""
  from dream_jax.data import shapes
  c = _config()
  assert c.data.max_objects == 2
  pairs = shapes.heldout_prompts(24, c.seed, max_objects=1)
  assert all(int(a["num_objects"]) == 1 for _, a in pairs)
  both = shapes.heldout_prompts(24, c.seed, max_objects=2)
  assert any(int(a["num_objects"]) == 2 for _, a in both)
  ref = fidelity.reference_rows(c, 24, max_objects=1)
  assert ref["real/color_ok"] == 1.0 and ref["real/all_ok"] >= 0.8
  assert ref["chance/cell_ok"] < 0.5


@pytest.mark.slow
def test_fidelity_end_to_end(tmp_path):
  c = _config()
  comp = Components(c)
  model, it = comp.model, comp.image_tokens
  v = jax.jit(model.init)(jax.random.key(0))
  fns = sampling.make_predict_fns(model, c, it, comp.conditioning, comp.tokenize)
  ec = ev_configs.geneval(every=1, num_prompts=3, batch=2,
                          modes=("plain", "sad", "best_of_k"), num_candidates=2)
  ev = build_evaluator(ec, fns, EvalContext(c, str(tmp_path)))
  out = ev.run(v, step=5)
  for mode in ("plain", "sad", "best_of_k"):
    for k in fidelity.CHECKS:
      assert 0.0 <= out[f"{mode}/{k}"] <= 1.0
    assert os.path.exists(tmp_path / "samples" / f"geneval_000005_{mode}.png")
    # The timed pass reuses the warm-up's compiled program: its two batches take less than
    # the warm-up's compilation plus one batch.
    assert 0.0 < out[f"{mode}/seconds"] < out[f"{mode}/warmup_seconds"]
  assert "chance/color_ok" in out and out["num_prompts"] == 3
  json.dumps(out)   # metrics.jsonl-serialisable
