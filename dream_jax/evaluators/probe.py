"""Linear probe on frozen features (official protocol) and a closed-form ridge probe.

Protocol (MAE linear probing, which DREAM follows): features of the frozen EMA encoder with
nothing masked (mean of the buffer-token outputs), a parameter-free LayerNorm over each
feature vector, a BatchNorm without affine parameters (statistics of the probe's training
set), then ONE linear layer trained with LARS (optax.lars; lr = base_lr * batch / 256,
linear warm-up then cosine decay, no weight decay) with softmax cross-entropy on the cached
features; top-1 on the test split. The ridge probe solves the same linear map to one-hot
targets in closed form on the same normalised features (a fast, optimizer-free check).

Keys (configs/evaluators.py:linear_probe): pred, data, pooling, final_norm, epochs,
warmup_epochs, batch_size, base_lr, weight_decay, momentum, trust_coefficient, ridge, lars,
feature_batch, seed. Results: top1, ridge_top1 (when ridge > 0), train_top1, num_train,
num_test, num_classes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dream_jax.evaluators.common import fit_by_scan
from dream_jax.evaluators.features import image_features, pooled


def layer_norm_no_params(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """[N, D] -> each row standardised over D (no scale or bias)."""
  mu = x.mean(1, keepdims=True)
  return (x - mu) / np.sqrt(x.var(1, keepdims=True) + eps)


def batch_norm_stats(train: np.ndarray, eps: float = 1e-6):
  """Per-dimension mean and 1/std of the training features (non-affine BatchNorm)."""
  return train.mean(0), 1.0 / np.sqrt(train.var(0) + eps)


def normalise(train: np.ndarray, test: np.ndarray):
  """Parameter-free LayerNorm, then BatchNorm (affine=False) with the TRAIN statistics."""
  tr, te = layer_norm_no_params(train), layer_norm_no_params(test)
  mu, inv = batch_norm_stats(tr)
  return (tr - mu) * inv, (te - mu) * inv


def ridge_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, lam: float):
  """Closed-form ridge regression to one-hot targets: (W [D, C], b [C]) minimising
  |x W + b - onehot|^2 + lam * N * |W|^2 (bias unregularised, by centring)."""
  mx = x.mean(0)
  xc = x - mx
  t = np.eye(num_classes)[y]
  mt = t.mean(0)
  n, d = x.shape
  if d <= n:
    w = np.linalg.solve(xc.T @ xc + lam * n * np.eye(d), xc.T @ (t - mt))
  else:   # dual form: fewer examples than dimensions
    w = xc.T @ np.linalg.solve(xc @ xc.T + lam * n * np.eye(n), t - mt)
  return w, mt - mx @ w


def train_linear_head(x, y, num_classes: int, *, epochs: int, warmup_epochs: int,
                      batch_size: int, base_lr: float, weight_decay: float, momentum: float,
                      trust_coefficient: float, lars: bool, seed: int):
  """Linear head [D, C] + bias trained with softmax cross-entropy on fixed features; one
  jitted scan over every step (shuffled batches of `batch_size`, the last partial batch of
  an epoch dropped, as a DataLoader with drop_last). Returns (W, b) as numpy."""
  n, d = x.shape
  bs = min(batch_size, n)
  steps_per_epoch = max(1, n // bs)
  total = epochs * steps_per_epoch
  lr = base_lr * bs / 256
  warm = warmup_epochs * steps_per_epoch
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warm), max(total, warm + 1), 0.0)
  if lars:
    # MAE's LARS: the bias (1-D) is excluded from weight decay and the trust ratio.
    mask = dict(w=True, b=False)
    tx = optax.lars(sched, weight_decay=weight_decay, weight_decay_mask=mask,
                    trust_coefficient=trust_coefficient, trust_ratio_mask=mask,
                    momentum=momentum)
  else:
    tx = optax.sgd(sched, momentum=momentum)
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  # MAE initialises the head with std 0.01 (trunc_normal) and a zero bias.
  params = dict(w=0.01 * jax.random.normal(jax.random.key(seed), (d, num_classes)),
                b=jnp.zeros((num_classes,)))
  perms = jnp.stack([jax.random.permutation(jax.random.fold_in(jax.random.key(seed), e), n)
                     for e in range(epochs)])[:, : steps_per_epoch * bs]
  order = perms.reshape(total, bs)

  def loss_fn(p, idx):
    logits = xj[idx] @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yj[idx]).mean()

  p = fit_by_scan(loss_fn, tx, params, order)
  return np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)


def accuracy(x, y, w, b) -> float:
  return float(((x @ w + b).argmax(1) == y).mean())


class Evaluator:
  """Linear probe (module docstring)."""

  def __init__(self, predict_fns, *, context, pred, data, pooling, final_norm, epochs,
               warmup_epochs, batch_size, base_lr, weight_decay, momentum,
               trust_coefficient, ridge, lars, feature_batch, seed):
    self.fn_name, self.predict_fns, self.context = pred, predict_fns, context
    self.data, self.pooling, self.final_norm = data, pooling, bool(final_norm)
    self.train_kw = dict(epochs=int(epochs), warmup_epochs=int(warmup_epochs),
                         batch_size=int(batch_size), base_lr=float(base_lr),
                         weight_decay=float(weight_decay), momentum=float(momentum),
                         trust_coefficient=float(trust_coefficient), lars=bool(lars),
                         seed=int(seed))
    self.ridge, self.feature_batch = float(ridge), int(feature_batch)

  def features(self, variables, split, cache):
    f, d = image_features(self.predict_fns, self.fn_name, variables, self.data, split,
                          self.context.run_config, cache=cache, batch=self.feature_batch)
    return pooled(f, self.pooling, self.final_norm), d.labels, d

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step
    xtr, ytr, dtr = self.features(variables, "train", cache)
    xte, yte, _ = self.features(variables, "test", cache)
    return probe_scores(xtr, ytr, xte, yte, max(len(dtr.class_names), int(ytr.max()) + 1),
                        ridge=self.ridge, **self.train_kw)


def probe_scores(xtr, ytr, xte, yte, num_classes: int, *, ridge: float, **train_kw) -> dict:
  """The probe on given features: LayerNorm + BatchNorm, LARS head, optional ridge."""
  xtr, xte = normalise(np.asarray(xtr, np.float64), np.asarray(xte, np.float64))
  out = dict(num_train=float(len(xtr)), num_test=float(len(xte)),
             num_classes=float(num_classes))
  if train_kw["epochs"] > 0:
    w, b = train_linear_head(xtr, ytr, num_classes, **train_kw)
    out.update(top1=accuracy(xte, yte, w, b), train_top1=accuracy(xtr, ytr, w, b))
  if ridge > 0:
    w, b = ridge_classifier(xtr, ytr, num_classes, ridge)
    out["ridge_top1"] = accuracy(xte, yte, w, b)
  return out
