"""Labelled data the evaluators open themselves (`data=` entries, see configs/evaluators.py).

`load_split(spec, run_config, split) -> Split` with
  images   [N, S, S, 3] float32 in [-1, 1]   (S = the run's data.image_size)
  labels   [N] int32 (class), or dense targets: [N, S, S] int32 ('segmentation') /
           [N, S, S] float32 ('depth')
  captions list[str] (sources with captions; [] otherwise)
  class_names tuple[str, ...]
Every host loads the same arrays (evaluation sets are small; features are then computed on
a host's share of rows and gathered, see common.map_batches). Results are memoised per
(spec, image size, split) in this process, so a periodic evaluation re-reads nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np

from dream_jax.data import shapes
from dream_jax.data.pipeline import decode_image, pil_to_uint8, to_unit_range

# Shapes index streams for evaluator data: disjoint from training ([0, size)) and from the
# run's held-out eval split (HELDOUT_OFFSET + [0, eval_size)).
_SHAPES_BASE = shapes.HELDOUT_OFFSET + (1 << 32)
_SPLIT_OFFSET = {"train": 0, "test": 1 << 30}
SHAPES_LABELS = dict(color=shapes.COLORS, shape=shapes.SHAPES, cell=shapes.CELLS,
                     size=shapes.SIZES)


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray
  labels: np.ndarray | None
  captions: tuple
  class_names: tuple

  def __len__(self) -> int:
    return len(self.images)


def spec_key(spec) -> str:
  """A stable string naming a data entry (cache keys, reference-statistics files)."""
  return json.dumps(spec.to_dict() if hasattr(spec, "to_dict") else dict(spec), sort_keys=True)


def load_split(spec, run_config, split: str) -> Split:
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  d = run_config.data
  return _load(spec_key(spec), int(d.image_size), split, int(d.max_objects),
               float(d.two_object_prob), d.cache_dir)


@functools.lru_cache(maxsize=16)
def _load(key: str, image_size: int, split: str, max_objects: int, two_prob: float,
          cache_dir: str) -> Split:
  spec = json.loads(key)
  n = int(spec["train_size" if split == "train" else "test_size"])
  source = spec["source"]
  if source == "shapes":
    return _shapes(spec, image_size, split, n, max_objects, two_prob)
  if source == "mnist":
    return _mnist(image_size, split, n, cache_dir)
  if source == "folder":
    return _folder(spec, image_size, split, n)
  if source == "tfds":
    return _tfds(spec, image_size, split, n)
  raise ValueError(f"data.source must be 'shapes', 'mnist', 'folder' or 'tfds', got {source!r}")


def _shapes(spec, image_size, split, n, max_objects, two_prob) -> Split:
  """Class labels ('color', 'shape', 'cell', 'size') use ONE-object images (a two-object
  image has two colours); 'none' (retrieval), 'segmentation' and 'depth' use the run's
  object counts. Dense targets come from `shapes.make_example_maps`."""
  label = spec["label"]
  if n <= 0:
    raise ValueError(f"data.{split}_size must be > 0 for source='shapes'")
  single = label in SHAPES_LABELS
  mo, tp = (1, 0.0) if single else (max_objects, two_prob)
  base = _SHAPES_BASE + int(spec["seed"]) * (1 << 31) + _SPLIT_OFFSET[split]
  images, labels, caps = [], [], []
  for i in range(n):
    if label in ("segmentation", "depth"):
      ex = shapes.make_example_maps(0, base + i, image_size, max_objects=mo,
                                      two_object_prob=tp)
      labels.append(ex[label])
    else:
      ex = shapes.make_example(0, base + i, image_size, max_objects=mo, two_object_prob=tp)
      if single:
        labels.append(int(ex[label][0]))
    images.append(ex["image"])
    caps.append(ex["caption"])
  names = SHAPES_LABELS.get(label, ("background",) + shapes.SHAPES
                            if label == "segmentation" else ())
  lab = None if label == "none" else np.asarray(
      labels, np.float32 if label == "depth" else np.int32)
  return Split(to_unit_range(np.stack(images)), lab, tuple(caps), tuple(names))


def _mnist(image_size, split, n, cache_dir) -> Split:
  from dream_jax.data.sources import DIGITS, MnistSource
  src = MnistSource(image_size, "train" if split == "train" else "eval", cache_dir=cache_dir)
  count = len(src) if n <= 0 else min(n, len(src))
  # Stride through the source so a subset still covers every class.
  idx = np.linspace(0, len(src) - 1, count).round().astype(int) if count < len(src) \
      else np.arange(len(src))
  recs = [src.load(int(i)) for i in idx]
  return Split(to_unit_range(np.stack([r["image"] for r in recs])),
               np.asarray([r["label"] for r in recs], np.int32),
               tuple(r["caption"] for r in recs), DIGITS)


def _list_class_folders(root: str):
  classes = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
  if not classes:
    raise FileNotFoundError(f"no class sub-folders in {root}")
  items = []
  for c, name in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(root, name))):
      if f.lower().rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "webp", "bmp", "gif"):
        items.append((os.path.join(root, name, f), c))
  return classes, items


def _folder(spec, image_size, split, n) -> Split:
  """`path/<class>/*.png` (split by `test_frac` per class, deterministic) or
  `path/train/<class>/...` + `path/test/<class>/...`."""
  root = spec["path"]
  if not root:
    raise ValueError("data.path is empty; source='folder' needs it")
  if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test")):
    classes, items = _list_class_folders(os.path.join(root, split))
  else:
    classes, items = _list_class_folders(root)
    rng = np.random.default_rng(int(spec["seed"]))
    keep = []
    for c in range(len(classes)):
      mine = [it for it in items if it[1] == c]
      order = rng.permutation(len(mine))
      n_test = max(1, int(round(len(mine) * float(spec["test_frac"]))))
      chosen = order[:n_test] if split == "test" else order[n_test:]
      keep += [mine[j] for j in sorted(chosen)]
    items = keep
  if n > 0:
    items = items[:: max(1, len(items) // n)][:n]
  images = []
  for path, _ in items:
    with open(path, "rb") as f:
      images.append(pil_to_uint8(decode_image(f.read(), image_size), False))
  return Split(to_unit_range(np.stack(images)), np.asarray([c for _, c in items], np.int32),
               (), tuple(classes))


def _tfds(spec, image_size, split, n) -> Split:
  """A TFDS dataset prepared as array_record (never downloads), read with `data_source`."""
  import tensorflow_datasets as tfds
  from PIL import Image

  from dream_jax.data.pipeline import prepare_pil
  name = spec["name"]
  builder = tfds.builder(name, data_dir=spec["path"] or None)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared under {builder.data_dir}; build it once with "
        f"`tfds build {name} --file_format=array_record` (this evaluator never downloads)")
  tsplit = spec["train_split" if split == "train" else "test_split"]
  src = builder.as_data_source(split=tsplit)
  count = len(src) if n <= 0 else min(n, len(src))
  idx = np.linspace(0, len(src) - 1, count).round().astype(int) if count < len(src) \
      else np.arange(len(src))
  label = spec["label"]
  dense = label in ("segmentation", "depth")
  label_key = spec["target_key"] if dense else label
  feature = builder.info.features[label_key]
  names = tuple(getattr(feature, "names", None) or ())
  images, labels = [], []
  for i in idx:
    ex = src[int(i)]
    arr = np.asarray(ex[spec["image_key"]])
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = np.repeat(arr, 3, axis=-1)
    if dense:   # image and target resized alike (no crop), so pixels stay aligned
      images.append(np.asarray(Image.fromarray(arr).resize((image_size, image_size),
                                                           Image.BICUBIC)))
      labels.append(_resize_target(np.asarray(ex[label_key]), image_size, label))
    else:
      images.append(pil_to_uint8(prepare_pil(Image.fromarray(arr), image_size), False))
      labels.append(int(np.asarray(ex[label_key])))
  if label == "segmentation" and not names:
    names = tuple(str(c) for c in range(int(np.max(labels)) + 1))
  dtype = np.float32 if label == "depth" else np.int32
  return Split(to_unit_range(np.stack(images)), np.asarray(labels, dtype), (), names)


def _resize_target(t: np.ndarray, size: int, label: str) -> np.ndarray:
  """A per-pixel target [H, W(, 1)] -> [size, size]: nearest for classes, bilinear for depth."""
  from PIL import Image
  t = t[..., 0] if t.ndim == 3 else t
  if label == "segmentation":
    return np.asarray(Image.fromarray(t.astype(np.int32)).resize((size, size), Image.NEAREST))
  return np.asarray(Image.fromarray(t.astype(np.float32)).resize((size, size), Image.BILINEAR))
