"""Zero-shot classification through the model's own text tower (CLIP protocol).

Class embedding = mean of the unit-norm caption embeddings of every template filled with the
class name, re-normalised; an image is assigned the class of highest cosine similarity with
its unit-norm image embedding. Reported: top1 and chance (1 / classes), on the data's test
split. Keys (configs/evaluators.py:zeroshot): pred_image, pred_text, data, templates,
class_names (() = the source's names), feature_batch.
"""
from __future__ import annotations

import numpy as np

from dream_jax.evaluators import datasets
from dream_jax.evaluators.features import caption_features, image_features


def class_embeddings(text_emb: np.ndarray, num_classes: int, num_templates: int) -> np.ndarray:
  """[C*T, E] (class-major) unit-norm prompt embeddings -> [C, E] unit-norm class embeddings."""
  e = text_emb.reshape(num_classes, num_templates, -1).mean(1)
  return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def zeroshot_top1(img: np.ndarray, cls: np.ndarray, labels: np.ndarray) -> float:
  return float(((img @ cls.T).argmax(1) == labels).mean())


class Evaluator:
  """Zero-shot (module docstring)."""

  def __init__(self, predict_fns, *, context, pred_image, pred_text, data, templates,
               class_names, feature_batch):
    self.predict_fns, self.context = predict_fns, context
    self.pred_image, self.pred_text, self.data = pred_image, pred_text, data
    self.templates, self.class_names = tuple(templates), tuple(class_names)
    self.feature_batch = int(feature_batch)
    if not self.templates or any("{}" not in t for t in self.templates):
      raise ValueError(f"zeroshot templates must each contain '{{}}': {self.templates}")

  def run(self, variables, *, step=None, cache=None) -> dict:
    del step
    img, d = image_features(self.predict_fns, self.pred_image, variables, self.data, "test",
                            self.context.run_config, cache=cache, batch=self.feature_batch)
    names = self.class_names or d.class_names
    prompts = [t.format(n) for n in names for t in self.templates]
    txt = caption_features(self.predict_fns, self.pred_text, variables, prompts, cache=cache,
                           batch=self.feature_batch,
                           key=("zeroshot", datasets.spec_key(self.data), tuple(prompts)))
    cls = class_embeddings(np.asarray(txt, np.float64), len(names), len(self.templates))
    return dict(top1=zeroshot_top1(np.asarray(img, np.float64), cls, d.labels),
                chance=1.0 / len(names), num_test=float(len(d)))
