"""Mini-GenEval evaluator (formerly 'fidelity'): reference rows (checker ceiling and chance) and an end-to-end run with
the sampler's predict functions on a tiny random model (the numbers are not meaningful)."""
import json
import os

import jax

from configs import dream_b16
from dream_jax import sampling
from configs import evaluators as ev_configs
from dream_jax.evaluators import EvalContext, build_evaluator
from dream_jax.evaluators import geneval as fidelity
from dream_jax.image_tokens import ImageTokens
from dream_jax.models.api import DreamModel


def _config():
  c = dream_b16.get_config("runlocal")
  c.tokenizer.kind = "identity"
  c.tokenizer.patch_size = 4
  c.text.cond_encoder = "small"
  c.model.encoder_buckets = 2
  c.model.diffusion_buckets = 2
  c.sampling.update(num_steps=4, num_diffusion_steps="3", cfg=3.0, sad_candidates=3,
                    sad_step=2)
  return c


def test_reference_rows_ceiling_above_chance():
  c = _config()
  ref = fidelity.reference_rows(c, 24)
  assert ref["real/color_ok"] >= 0.9 and ref["real/all_ok"] >= 0.7
  assert ref["chance/all_ok"] < ref["real/all_ok"]
  assert ref["chance/color_ok"] < 0.6


def test_fidelity_end_to_end(tmp_path):
  c = _config()
  model, it = DreamModel(c), ImageTokens(c)
  obj = sampling.build_objective(model, c, it)
  v = jax.jit(model.init)(jax.random.key(0))
  fns = sampling.make_predict_fns(model, c, it, obj)
  ec = ev_configs.geneval(every=1, num_prompts=3, batch=2,
                          modes=("plain", "sad", "best_of_k"), num_candidates=2)
  ev = build_evaluator(ec, fns, EvalContext(c, str(tmp_path)))
  out = ev.run(v, step=5)
  for mode in ("plain", "sad", "best_of_k"):
    for k in fidelity.CHECKS:
      assert 0.0 <= out[f"{mode}/{k}"] <= 1.0
    assert os.path.exists(tmp_path / "samples" / f"geneval_000005_{mode}.png")
  assert "chance/color_ok" in out and out["num_prompts"] == 3
  json.dumps(out)   # metrics.jsonl-serialisable
