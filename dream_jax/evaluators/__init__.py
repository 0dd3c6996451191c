"""Evaluators, found by `config.evals.<name>.kind` (big_vision style: they receive named
predict functions, never the model).

Contract (every evaluator class):
  Evaluator(eval_config, *, config, workdir)      eval_config = config.evals.<name>
  .run(predict_fns, eval_data, variables, *, step) -> dict[str, float]
      predict_fns: dict name -> function (see dream_jax/train/predict.py: embed_image,
        embed_text, diffusion_loss_at; sampling ones from dream_jax.sampling.make_predict_fns)
      eval_data: the DataSource of `make_dataset(config, 'eval')`; iterate a fresh pass with
        `eval_data.iterator()` (host-local numpy batches with a `valid` mask)
      variables: {'params': EMA params, 'batch_stats': BN statistics}
  Results are written by the trainer to metrics.jsonl as '<name>/<key>'. Evaluators may
  write files under `workdir` (e.g. `W/samples/`).
Common keys of `config.evals.<name>`: kind, every (steps; also run at the end), at_start
(default True: also run at step 0).
"""
from __future__ import annotations

import importlib


def _heldout():
  from dream_jax.evaluators.heldout import Evaluator
  return Evaluator


def _fidelity():
  # Lazy: the sampler is heavier and optional for runs that only train.
  return importlib.import_module("dream_jax.evaluators.fidelity").Evaluator


# kind -> zero-argument loader of the evaluator class.
EVALUATORS = {
    "heldout": _heldout,
    "fidelity": _fidelity,
}


def get_evaluator(kind: str):
  if kind not in EVALUATORS:
    raise ValueError(f"config.evals.*.kind: unknown evaluator {kind!r}; known: "
                     f"{sorted(EVALUATORS)}")
  return EVALUATORS[kind]()
