"""Evaluators, found by `config.evals.<name>.kind` (big_vision style: they receive named
predict functions, open their own data and never import the model).

Contract (every evaluator class):
  Evaluator(predict_fns, *, context, **own_keys)
      predict_fns: dict name -> function (dream_jax/train/predict.py: embed_image,
        embed_text, embed_captions, embed_image_features, embed_image_tokens,
        diffusion_loss_at; sample, sample_sad, best_of_k from dream_jax.sampling); an
        evaluator uses the ones its keys name (e.g. pred='embed_image_features')
      context: common.EvalContext(run_config, workdir) (to open data as the run saw it)
      own_keys: the entry's keys except kind/every/at_start, as explicit keyword arguments;
        their defaults live in configs/evaluators.py (an unknown key is a TypeError naming it)
  .run(variables, *, step, cache) -> dict[str, float]
      variables: {'params': EMA params, 'batch_stats': BN statistics}
      cache: a common.FeatureCache made fresh for every evaluation (features shared between
        evaluators that ask for the same predict fn on the same data)
  Every host runs every evaluator and gets the same numbers (features are gathered with
  process_allgather). Results go to metrics.jsonl as '<name>/<key>'.

Kinds: heldout, linear_probe, fewshot, zeroshot, retrieval, geneval (alias: fidelity), fid,
segmentation, depth.
"""
from __future__ import annotations

import importlib

from dream_jax.evaluators.common import EvalContext, FeatureCache

# kind -> module (imported lazily: the generation evaluators pull in the sampler's helpers).
EVALUATORS = {
    "heldout": "dream_jax.evaluators.heldout",
    "linear_probe": "dream_jax.evaluators.probe",
    "fewshot": "dream_jax.evaluators.fewshot",
    "zeroshot": "dream_jax.evaluators.zeroshot",
    "retrieval": "dream_jax.evaluators.retrieval",
    "geneval": "dream_jax.evaluators.geneval",
    "fidelity": "dream_jax.evaluators.geneval",      # the name before mini-GenEval
    "fid": "dream_jax.evaluators.generation",
    "segmentation": "dream_jax.evaluators.dense",
    "depth": "dream_jax.evaluators.dense",
}
COMMON_KEYS = ("kind", "every", "at_start")

__all__ = ["EVALUATORS", "COMMON_KEYS", "EvalContext", "FeatureCache", "get_evaluator",
           "build_evaluator"]


def get_evaluator(kind: str):
  if kind not in EVALUATORS:
    raise ValueError(f"config.evals.*.kind: unknown evaluator {kind!r}; known: "
                     f"{sorted(EVALUATORS)}")
  module = importlib.import_module(EVALUATORS[kind])
  return getattr(module, "EVALUATOR_CLASSES", {}).get(kind, module.Evaluator)


def build_evaluator(entry, predict_fns: dict, context: EvalContext):
  """An evaluator from its config entry (kind/every/at_start are the trainer's keys)."""
  cls = get_evaluator(entry["kind"])
  own = {k: entry[k] for k in entry.keys() if k not in COMMON_KEYS}
  return cls(predict_fns, context=context, **own)
