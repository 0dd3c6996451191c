"""Dense probes on frozen per-token features: semantic segmentation (mIoU) and depth (RMSE).

Features: `embed_image_tokens` -> [N, L, D] image-token encoder outputs (nothing masked),
reshaped to the token grid [N, g, g, D] (g = sqrt(L)); with or without the final LayerNorm.
  segmentation  a per-token linear head D -> C whose logits are upsampled (bilinear) to the
                label resolution and trained with pixel cross-entropy (Adam, `steps` steps on
                minibatches of `batch_size` images; pixels equal to `ignore_index` ignored);
                mIoU over classes on the test split (classes absent from both prediction
                and ground truth are skipped), plus pixel accuracy.
  depth         a per-token ridge regression D -> depth (targets: the depth map area-averaged
                to the token grid), predictions upsampled (bilinear) to pixels; RMSE on the
                test pixels, beside the RMSE of predicting the train mean depth.
Data: the shapes renderer's ground truth (`data=shapes_data('segmentation' | 'depth')`,
shapes.make_example_maps) or an ADE20K / NYU-v2 TFDS entry when prepared locally.
Keys: configs/evaluators.py:segmentation / depth.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dream_jax.evaluators.common import fit_by_scan
from dream_jax.evaluators.features import image_features


def token_grid(tokens: np.ndarray) -> np.ndarray:
  n, l, d = tokens.shape
  g = int(round(np.sqrt(l)))
  if g * g != l:
    raise ValueError(f"dense probes need a square token grid, got {l} tokens")
  return tokens.reshape(n, g, g, d)


def upsample(x, size: int):
  """[N, g, g, C] -> [N, size, size, C] bilinear (half-pixel centres)."""
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bilinear")


def mean_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int) -> tuple:
  """(mIoU, pixel accuracy) over pixels where gt != ignore."""
  ok = gt != ignore
  p, g = pred[ok].astype(np.int64), gt[ok].astype(np.int64)
  conf = np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(
      num_classes, num_classes)
  tp = np.diag(conf).astype(np.float64)
  union = conf.sum(0) + conf.sum(1) - tp
  present = union > 0
  return float((tp[present] / union[present]).mean()), float(tp.sum() / max(1, conf.sum()))


def train_segmentation_head(feats, labels, num_classes, *, steps, lr, batch_size,
                            weight_decay, ignore_index, seed):
  """Per-token linear head on [N, g, g, D] features, logits upsampled to the labels' size."""
  n, _, _, d = feats.shape
  size = labels.shape[1]
  x, y = jnp.asarray(feats, jnp.float32), jnp.asarray(labels, jnp.int32)
  params = dict(w=jnp.zeros((d, num_classes)), b=jnp.zeros((num_classes,)))
  tx = optax.adamw(lr, weight_decay=weight_decay)
  bs = min(batch_size, n)
  idx = jax.random.randint(jax.random.key(seed), (steps, bs), 0, n)

  def loss_fn(p, i):
    logits = upsample(x[i] @ p["w"] + p["b"], size)
    ok = y[i] != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(ok, y[i], 0))
    return (ce * ok).sum() / jnp.maximum(ok.sum(), 1)

  return fit_by_scan(loss_fn, tx, params, idx)


def predict_segmentation(params, feats, size: int) -> np.ndarray:
  logits = upsample(jnp.asarray(feats, jnp.float32) @ params["w"] + params["b"], size)
  return np.asarray(logits.argmax(-1))


def depth_probe(ftr, dtr, fte, dte, ridge: float) -> dict:
  """Ridge regression per token ([N, g, g, D] features, [N, S, S] depth maps) -> RMSE."""
  n, g, _, d = ftr.shape
  size = dtr.shape[1]
  f = size // g
  target = dtr.reshape(n, g, f, g, f).mean((2, 4)).reshape(-1)
  x = ftr.reshape(-1, d).astype(np.float64)
  mx, mt = x.mean(0), target.mean()
  xc = x - mx
  w = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(d), xc.T @ (target - mt))
  pred_tok = ((fte.reshape(-1, d) - mx) @ w + mt).reshape(len(fte), g, g, 1)
  pred = np.asarray(upsample(jnp.asarray(pred_tok, jnp.float32), size))[..., 0]
  return dict(rmse=float(np.sqrt(((pred - dte) ** 2).mean())),
              rmse_mean_baseline=float(np.sqrt(((dtr.mean() - dte) ** 2).mean())),
              num_test=float(len(fte)))


class _DenseBase:
  def _tokens(self, variables, split, cache):
    f, d = image_features(self.predict_fns, self.fn_name, variables, self.data, split,
                          self.context.run_config, cache=cache, batch=self.feature_batch)
    return token_grid(np.asarray(f["tokens" if self.final_norm else "tokens_no_ln"])), d


class SegmentationEvaluator(_DenseBase):
  def __init__(self, predict_fns, *, context, pred, data, final_norm, steps, lr, batch_size,
               weight_decay, num_classes, ignore_index, feature_batch, seed):
    self.predict_fns, self.context, self.fn_name, self.data = predict_fns, context, pred, data
    self.final_norm, self.feature_batch = bool(final_norm), int(feature_batch)
    self.kw = dict(steps=int(steps), lr=float(lr), batch_size=int(batch_size),
                   weight_decay=float(weight_decay), ignore_index=int(ignore_index),
                   seed=int(seed))
    self.num_classes = int(num_classes)

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step
    ftr, dtr = self._tokens(variables, "train", cache)
    fte, dte = self._tokens(variables, "test", cache)
    c = self.num_classes or len(dtr.class_names)
    params = train_segmentation_head(ftr, dtr.labels, c, **self.kw)
    pred = predict_segmentation(params, fte, dte.labels.shape[1])
    miou, acc = mean_iou(pred, dte.labels, c, self.kw["ignore_index"])
    # Reference: predicting the most frequent train class everywhere.
    major = np.full_like(dte.labels, np.bincount(dtr.labels.reshape(-1)).argmax())
    base, _ = mean_iou(major, dte.labels, c, self.kw["ignore_index"])
    return dict(miou=miou, pixel_acc=acc, miou_majority_baseline=base,
                num_test=float(len(fte)))


class DepthEvaluator(_DenseBase):
  def __init__(self, predict_fns, *, context, pred, data, final_norm, ridge, feature_batch):
    self.predict_fns, self.context, self.fn_name, self.data = predict_fns, context, pred, data
    self.final_norm, self.ridge, self.feature_batch = bool(final_norm), float(ridge), \
        int(feature_batch)

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step
    ftr, dtr = self._tokens(variables, "train", cache)
    fte, dte = self._tokens(variables, "test", cache)
    return depth_probe(ftr, dtr.labels, fte, dte.labels, self.ridge)


EVALUATOR_CLASSES = dict(segmentation=SegmentationEvaluator, depth=DepthEvaluator)
Evaluator = SegmentationEvaluator
