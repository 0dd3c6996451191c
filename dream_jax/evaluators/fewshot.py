"""Few-shot classification on frozen features: N-way K-shot episodes, closed-form classifier.

Each episode draws `ways` classes, `shots` training and `queries` test examples per class
(train examples from the data's train split, queries from its test split), L2-normalises the
features, fits a ridge regression to one-hot targets in closed form (the big_vision few-shot
evaluator's classifier) and scores the queries. Reported: `acc` (mean over episodes) and
`acc_ci95` (1.96 x standard error), `chance` = 1/ways. Paper: 5-way 5-shot over 14 datasets;
here one dataset per entry (one entry per dataset for the paper's average).

Keys (configs/evaluators.py:fewshot): pred, data, pooling, final_norm, ways, shots, queries,
episodes, ridge, feature_batch, seed.
"""
from __future__ import annotations

import numpy as np

from dream_jax.evaluators.features import image_features, pooled
from dream_jax.evaluators.probe import ridge_classifier


def l2_normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def episodes(xtr, ytr, xte, yte, *, ways: int, shots: int, queries: int, num: int,
             ridge: float, seed: int) -> np.ndarray:
  """[num] accuracies of N-way K-shot episodes (features are L2-normalised here)."""
  xtr, xte = l2_normalise(np.asarray(xtr, np.float64)), l2_normalise(np.asarray(xte, np.float64))
  rng = np.random.default_rng(seed)
  by_tr = {c: np.nonzero(ytr == c)[0] for c in np.unique(ytr)}
  by_te = {c: np.nonzero(yte == c)[0] for c in np.unique(yte)}
  usable = sorted(c for c in by_tr if len(by_tr[c]) >= shots and len(by_te.get(c, ())) > 0)
  if len(usable) < ways:
    raise ValueError(f"few-shot: only {len(usable)} classes have >= {shots} train examples "
                     f"and a test example; {ways}-way needs {ways}")
  accs = np.zeros(num)
  for e in range(num):
    classes = rng.choice(usable, size=ways, replace=False)
    tr_idx = np.concatenate([rng.choice(by_tr[c], shots, replace=False) for c in classes])
    te_idx = np.concatenate([rng.choice(by_te[c], min(queries, len(by_te[c])), replace=False)
                             for c in classes])
    remap = {c: i for i, c in enumerate(classes)}
    y_s = np.asarray([remap[c] for c in ytr[tr_idx]])
    y_q = np.asarray([remap[c] for c in yte[te_idx]])
    w, b = ridge_classifier(xtr[tr_idx], y_s, ways, ridge)
    accs[e] = ((xte[te_idx] @ w + b).argmax(1) == y_q).mean()
  return accs


class Evaluator:
  """Few-shot (module docstring)."""

  def __init__(self, predict_fns, *, context, pred, data, pooling, final_norm, ways, shots,
               queries, episodes, ridge, feature_batch, seed):
    self.predict_fns, self.context, self.fn_name = predict_fns, context, pred
    self.data, self.pooling, self.final_norm = data, pooling, bool(final_norm)
    self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
    self.num, self.ridge, self.seed = int(episodes), float(ridge), int(seed)
    self.feature_batch = int(feature_batch)

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step
    out = {}
    for split in ("train", "test"):
      f, d = image_features(self.predict_fns, self.fn_name, variables, self.data, split,
                            self.context.run_config, cache=cache, batch=self.feature_batch)
      out[split] = (pooled(f, self.pooling, self.final_norm), d.labels)
    accs = episodes(*out["train"], *out["test"], ways=self.ways, shots=self.shots,
                    queries=self.queries, num=self.num, ridge=self.ridge, seed=self.seed)
    return {"acc": float(accs.mean()),
            "acc_ci95": float(1.96 * accs.std(ddof=1) / np.sqrt(len(accs))) if len(accs) > 1
            else 0.0,
            "chance": 1.0 / self.ways, "episodes": float(len(accs))}
