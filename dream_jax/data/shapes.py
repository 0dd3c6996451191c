"""The default dataset: procedural captioned shapes, in the package, no download.

Every example is a pure function of `(seed, index)` (a numpy Generator seeded from both), so
the data needs no files and any host can render any example. An image is a black canvas with
one or two objects; each object has a shape (circle, square, triangle, diamond), a colour (8
named RGB values), a size (small, large) and a cell of a 3x3 grid (top left ... bottom right)
with a small jitter inside the cell. Two objects never share a cell or a colour, and their
caption may state a relation ("to the left of", "above", ...) that holds on the grid.

Rendering rules (which `check_image` relies on):
  * canvas S x S (S divisible by 8), cell side S/3, object half-extent h = 0.10 S (small) or
    0.15 S (large), so an object fits inside its cell with margin; jitter keeps it inside;
  * circle: radius h; square: half side h; diamond: |dx| + |dy| <= h; triangle: apex up,
    base width 2h, height 2h (bounding box centred like the others);
  * antialiasing by 4x supersampling; objects never overlap, so a pixel's colour is
    coverage * object colour (black background).

Ground-truth attributes come with every example, per object [2] int32 (the second object is
padded with -1 when there is one object): `shape`, `color`, `size`, `cell`; per example:
`num_objects`, `relation` (index into RELATIONS that the caption states between object 0
and object 1, -1 if none) and `pos_stated` (1 when the caption names every object's cell).
Objects are listed in the order the caption mentions them.

Splits: train examples are indices [0, size); held-out examples are indices
HELDOUT_OFFSET + [0, n), so no held-out (seed, index) pair is ever a train pair.

`check_image(image, attrs)` inverts the rendering rules (colour -> blob -> size, cell, shape)
and is what the generation-fidelity evaluator runs on generated images.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
PALETTE = np.array([
    (220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 210, 40),
    (150, 60, 200), (240, 140, 30), (40, 200, 210), (235, 235, 235)], np.float32)
SIZES = ("small", "large")
# Grid cells, row-major: cell = 3 * row + col.
CELLS = ("top left", "top", "top right", "left", "center", "right",
         "bottom left", "bottom", "bottom right")
# Relations between object 0 and object 1 (in caption order).
RELATIONS = ("to the left of", "to the right of", "above", "below")
ATTR_KEYS = ("shape", "color", "size", "cell", "num_objects", "relation", "pos_stated")

HELDOUT_OFFSET = 1 << 40      # held-out indices start here (never reached by a train split)
HALF_EXTENT = (0.10, 0.15)    # object half-extent / S for small, large
SUPERSAMPLE = 4

_SIZE_WORDS = (("small", "little", "tiny"), ("large", "big"))
_POS_PHRASE = ("in the top left", "at the top", "in the top right", "on the left",
               "in the center", "on the right", "in the bottom left", "at the bottom",
               "in the bottom right")
_ONE_TEMPLATES = (
    "a {obj} {pos}",
    "{label}: a {obj}",
    "there is a {obj} {pos}",
    "{pos} there is a {obj}",
    "a picture of a {obj} {pos}",
    "a {obj} {pos} on a black background",
    "{obj} , {label}",
)
_TWO_REL_TEMPLATES = (
    "a {a} {rel} a {b}",
    "two shapes: a {a} {rel} a {b}",
    "there is a {a} {rel} a {b}",
)
_TWO_POS_TEMPLATES = (
    "{la}: a {a}, {lb}: a {b}",
    "{a} {la}, {b} {lb}",
)
MAX_CAPTION_WORDS = 14        # longest caption; word context 16 fits it with sot/eot


def _vocab() -> tuple[str, ...]:
  text = " ".join(list(SHAPES) + list(COLORS) + [w for ws in _SIZE_WORDS for w in ws]
                  + list(CELLS) + list(RELATIONS) + list(_POS_PHRASE)
                  + list(_ONE_TEMPLATES) + list(_TWO_REL_TEMPLATES) + list(_TWO_POS_TEMPLATES))
  return tuple(sorted(set(re.findall(r"[a-z0-9]+", re.sub(r"\{[a-z]+\}", " ", text)))))


VOCAB = _vocab()   # every caption word, for `WordTokenizer(VOCAB, context_length)`


# ----------------------------------------------------------------------------- sampling
def _sample_attrs(rng: np.random.Generator, max_objects: int, two_prob: float) -> dict:
  n = 2 if (max_objects >= 2 and rng.random() < two_prob) else 1
  cells = rng.choice(9, size=n, replace=False)
  colors = rng.choice(len(COLORS), size=n, replace=False)
  shapes = rng.integers(0, len(SHAPES), size=n)
  sizes = rng.integers(0, len(SIZES), size=n)
  pad = lambda v: np.concatenate([np.asarray(v, np.int32), np.full(2 - n, -1, np.int32)])
  relation, pos_stated = -1, 1
  if n == 2:
    (r0, c0), (r1, c1) = divmod(int(cells[0]), 3), divmod(int(cells[1]), 3)
    valid = [i for i, ok in enumerate((c0 < c1, c0 > c1, r0 < r1, r0 > r1)) if ok]
    if rng.random() < 0.7:          # relation caption (positions only relative)
      relation, pos_stated = int(rng.choice(valid)), 0
  return dict(shape=pad(shapes), color=pad(colors), size=pad(sizes), cell=pad(cells),
              num_objects=np.int32(n), relation=np.int32(relation),
              pos_stated=np.int32(pos_stated))


def _describe(rng, shape, color, size) -> str:
  words = _SIZE_WORDS[size]
  return f"{words[rng.integers(len(words))]} {COLORS[color]} {SHAPES[shape]}"


def _caption(rng: np.random.Generator, a: Mapping[str, np.ndarray]) -> str:
  objs = [_describe(rng, a["shape"][k], a["color"][k], a["size"][k])
          for k in range(int(a["num_objects"]))]
  cells = [int(c) for c in a["cell"][: len(objs)]]
  if len(objs) == 1:
    t = _ONE_TEMPLATES[rng.integers(len(_ONE_TEMPLATES))]
    return t.format(obj=objs[0], pos=_POS_PHRASE[cells[0]], label=CELLS[cells[0]])
  if int(a["relation"]) >= 0:
    t = _TWO_REL_TEMPLATES[rng.integers(len(_TWO_REL_TEMPLATES))]
    return t.format(a=objs[0], b=objs[1], rel=RELATIONS[int(a["relation"])])
  t = _TWO_POS_TEMPLATES[rng.integers(len(_TWO_POS_TEMPLATES))]
  return t.format(a=objs[0], b=objs[1], la=CELLS[cells[0]], lb=CELLS[cells[1]],
                  pa=_POS_PHRASE[cells[0]], pb=_POS_PHRASE[cells[1]])


def _centers(rng, a, image_size: int) -> list[tuple[float, float, float]]:
  """(cx, cy, h) in pixels per object; jitter keeps the object inside its cell."""
  out = []
  cell_side = image_size / 3
  for k in range(int(a["num_objects"])):
    h = HALF_EXTENT[int(a["size"][k])] * image_size
    row, col = divmod(int(a["cell"][k]), 3)
    slack = max(0.0, 0.8 * (cell_side / 2 - h))
    jx, jy = rng.uniform(-slack, slack, size=2)
    out.append(((col + 0.5) * cell_side + jx, (row + 0.5) * cell_side + jy, h))
  return out


def _coverage(shape: int, cx: float, cy: float, h: float, size: int) -> np.ndarray:
  """Fractional coverage [S, S] float32 of one object, by SUPERSAMPLE^2 point samples."""
  ss = SUPERSAMPLE
  cov = np.zeros((size, size), np.float32)
  x0, x1 = max(0, int(np.floor(cx - h)) - 1), min(size, int(np.ceil(cx + h)) + 1)
  y0, y1 = max(0, int(np.floor(cy - h)) - 1), min(size, int(np.ceil(cy + h)) + 1)
  xs = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss
  ys = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss
  dx, dy = xs[None, :] - cx, ys[:, None] - cy
  name = SHAPES[shape]
  if name == "circle":
    inside = dx * dx + dy * dy <= h * h
  elif name == "square":
    inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
  elif name == "diamond":
    inside = np.abs(dx) + np.abs(dy) <= h
  else:  # triangle, apex up: half-width grows from 0 at the top to h at the base
    inside = (dy >= -h) & (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
  block = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
  cov[y0:y1, x0:x1] = block
  return cov


def render(attrs: Mapping[str, np.ndarray], image_size: int,
           rng: np.random.Generator | None = None) -> np.ndarray:
  """Renders attributes -> image [S, S, 3] uint8 (jitter from `rng`; centred when None)."""
  if image_size % 8:
    raise ValueError(f"image_size must be divisible by 8, got {image_size}")
  centers = (_centers(rng, attrs, image_size) if rng is not None else
             _centers(np.random.default_rng(0), attrs, image_size))
  img = np.zeros((image_size, image_size, 3), np.float32)
  for k, (cx, cy, h) in enumerate(centers):
    cov = _coverage(int(attrs["shape"][k]), cx, cy, h, image_size)
    img += cov[..., None] * PALETTE[int(attrs["color"][k])]
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_example(seed: int, index: int, image_size: int, *, max_objects: int = 2,
                 two_object_prob: float = 0.5) -> dict[str, Any]:
  """One example, a pure function of (seed, index).

  Returns dict(image [S, S, 3] uint8, caption str, and the ATTR_KEYS as int32 arrays:
  shape/color/size/cell [2], num_objects/relation/pos_stated []).
  """
  rng = np.random.default_rng([int(seed), int(index)])
  attrs = _sample_attrs(rng, max_objects, two_object_prob)
  caption = _caption(rng, attrs)
  image = render(attrs, image_size, rng)
  return dict(image=image, caption=caption, **attrs)


class ShapesSource:
  """Random-access source: indices [0, size) -> `make_example(seed, offset + i)`.

  `load(i, flip)` gives the pipeline's record (image uint8, caption, attrs_* int32); the
  data is never flipped (captions say left and right), hence `flippable = False`.
  """

  flippable = False

  def __init__(self, seed: int, size: int, image_size: int, *, offset: int = 0,
               max_objects: int = 2, two_object_prob: float = 0.5):
    self.seed, self.size, self.image_size, self.offset = seed, size, image_size, offset
    self.max_objects, self.two_object_prob = max_objects, two_object_prob

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, i: int) -> dict[str, Any]:
    if not 0 <= i < self.size:
      raise IndexError(i)
    return make_example(self.seed, self.offset + int(i), self.image_size,
                        max_objects=self.max_objects, two_object_prob=self.two_object_prob)

  def load(self, i: int, flip: bool = False) -> dict[str, Any]:
    del flip
    ex = self[i]
    rec = dict(image=ex["image"], caption=ex["caption"])
    rec.update({f"attrs_{k}": np.asarray(ex[k], np.int32) for k in ATTR_KEYS})
    return rec


def _prompts(seed: int, offset: int, n: int, max_objects: int, two_object_prob: float):
  out = []
  for i in range(n):
    rng = np.random.default_rng([int(seed), offset + i])
    attrs = _sample_attrs(rng, max_objects, two_object_prob)
    out.append((_caption(rng, attrs), attrs))
  return out


def random_prompts(n: int, seed: int = 0, *, max_objects: int = 2,
                   two_object_prob: float = 0.5) -> list[tuple[str, dict]]:
  """n (caption, attrs) pairs from fresh random draws (not tied to a split)."""
  return _prompts(seed + 7919, 1 << 50, n, max_objects, two_object_prob)


def heldout_prompts(n: int, seed: int = 0, *, max_objects: int = 2,
                    two_object_prob: float = 0.5) -> list[tuple[str, dict]]:
  """The captions and attributes of the first n held-out examples (same as the eval split)."""
  return _prompts(seed, HELDOUT_OFFSET, n, max_objects, two_object_prob)


# ------------------------------------------------------------------------------ checker
_COLOR_MIN_ALPHA = 0.5     # a pixel belongs to a colour when >= half covered ...
_COLOR_MAX_RESID = 60.0    # ... and within this RGB distance of the scaled palette colour
_MIN_BLOB = 0.35           # a blob counts when its area >= this x a small circle's area
_SIZE_SPLIT = 0.235        # sqrt(width * height) / S: small 0.17-0.2, large 0.26-0.3
_SQUARE_FILL = 0.89        # area / (widest row * tallest column): square 1.0, circle ~0.79
_CIRCLE_FILL = 0.715       # ... diamond ~0.55 (<= 0.67 at 32 px), triangle 0.5
_TRIANGLE_SKEW = -0.3      # vertical skewness: triangle (apex up) -0.57, symmetric shapes 0


def _to_rgb255(image, value_range) -> np.ndarray:
  img = np.asarray(image)
  if img.dtype == np.uint8:
    return img.astype(np.float32)
  lo, hi = value_range
  return (np.asarray(img, np.float32) - lo) / (hi - lo) * 255.0


def _color_labels(img: np.ndarray):
  """Per pixel: nearest palette ray (label [H,W]), its coverage alpha and membership."""
  pal = PALETTE
  alpha = np.clip(img @ pal.T / (pal * pal).sum(1), 0.0, 1.5)          # [H, W, 8]
  resid = np.linalg.norm(img[..., None, :] - alpha[..., None] * pal, axis=-1)
  label = np.argmin(resid, axis=-1)
  a = np.take_along_axis(alpha, label[..., None], -1)[..., 0]
  r = np.take_along_axis(resid, label[..., None], -1)[..., 0]
  return label, a, r <= _COLOR_MAX_RESID


def _find_blob(label, alpha, close, color: int, image_size: int):
  """The largest connected blob of `color` -> soft weights [H, W], or None if absent."""
  from scipy import ndimage  # scipy comes with scikit-learn (pinned)

  core = (label == color) & close & (alpha >= _COLOR_MIN_ALPHA)
  if not core.any():
    return None
  comp, n = ndimage.label(core, structure=np.ones((3, 3)))
  sizes = ndimage.sum(core, comp, index=np.arange(1, n + 1))
  biggest = comp == (1 + int(np.argmax(sizes)))
  region = ndimage.binary_dilation(biggest) & (label == color) & close
  w = np.where(region, np.clip(alpha, 0.0, 1.0), 0.0)
  small_area = np.pi * (HALF_EXTENT[0] * image_size) ** 2
  if w.sum() < _MIN_BLOB * small_area:
    return None
  # A real object is one compact blob; noise spreads its colour over many fragments.
  if biggest.sum() < 0.5 * core.sum():
    return None
  return w


def _measure(w: np.ndarray) -> dict:
  """Blob weights [H, W] -> area, extents, bbox centre, fill ratio, vertical skewness."""
  area = float(w.sum())
  width, height = float(w.sum(1).max()), float(w.sum(0).max())
  ys, xs = np.nonzero(w >= 0.5)
  if len(ys) == 0:
    ys, xs = np.nonzero(w > 0)
  cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
  yy = np.arange(w.shape[0], dtype=np.float64)[:, None] + 0.5
  my = float((w * yy).sum() / area)
  var = float((w * (yy - my) ** 2).sum() / area)
  skew = float((w * (yy - my) ** 3).sum() / area / max(var, 1e-6) ** 1.5)
  return dict(area=area, width=width, height=height, cx=cx, cy=cy,
              fill=area / max(width * height, 1e-6), skew=skew)


def classify_shape(m: Mapping[str, float]) -> int:
  """Shape id from blob measurements (see the thresholds above)."""
  if m["skew"] < _TRIANGLE_SKEW:
    return SHAPES.index("triangle")
  if m["fill"] > _SQUARE_FILL:
    return SHAPES.index("square")
  if m["fill"] > _CIRCLE_FILL:
    return SHAPES.index("circle")
  return SHAPES.index("diamond")


def _get(attrs, key):
  return np.asarray(attrs[key] if key in attrs else attrs["attrs_" + key])


def check_image(image, attrs: Mapping[str, Any], *, value_range=(-1.0, 1.0)) -> dict:
  """Checks one image against its caption's attributes, by the rendering rules.

  Args:
    image: [H, W, 3] uint8 in [0, 255], or float in `value_range` (default [-1, 1], the
      batch / sampler convention).
    attrs: the ATTR_KEYS of one example (plain or with an `attrs_` prefix, as in batches).

  Returns dict of bools: color_ok (every object's colour forms a blob), shape_ok, size_ok,
  cell_ok (blob centre in the object's grid cell), position_ok (what the caption states:
  the cells when `pos_stated`, else the relation), relation_ok (True without a relation),
  count_ok (exactly num_objects palette colours form blobs), all_ok (all of the above);
  plus `found` [num_objects] per-object details under `objects`. A missing object fails
  every per-object test.
  """
  img = _to_rgb255(image, value_range)
  size = img.shape[0]
  label, alpha, close = _color_labels(img)
  n = int(_get(attrs, "num_objects"))
  shapes, colors = _get(attrs, "shape"), _get(attrs, "color")
  sizes, cells = _get(attrs, "size"), _get(attrs, "cell")
  objs = []
  for k in range(n):
    w = _find_blob(label, alpha, close, int(colors[k]), size)
    if w is None:
      objs.append(dict(found=False, shape_ok=False, size_ok=False, cell_ok=False))
      continue
    m = _measure(w)
    cell = 3 * min(2, int(m["cy"] * 3 / size)) + min(2, int(m["cx"] * 3 / size))
    size_id = int(np.sqrt(m["width"] * m["height"]) / size > _SIZE_SPLIT)
    objs.append(dict(found=True, shape_ok=classify_shape(m) == int(shapes[k]),
                     size_ok=size_id == int(sizes[k]), cell_ok=cell == int(cells[k]),
                     cell=cell, cx=m["cx"], cy=m["cy"]))
  present = sum(_find_blob(label, alpha, close, c, size) is not None
                for c in range(len(COLORS)))
  relation = int(_get(attrs, "relation"))
  relation_ok = True
  if relation >= 0:
    a, b = objs[0], objs[1]
    if not (a["found"] and b["found"]):
      relation_ok = False
    else:
      (r0, c0), (r1, c1) = divmod(a["cell"], 3), divmod(b["cell"], 3)
      relation_ok = (c0 < c1, c0 > c1, r0 < r1, r0 > r1)[relation]
  cell_ok = all(o["cell_ok"] for o in objs)
  out = dict(
      color_ok=all(o["found"] for o in objs),
      shape_ok=all(o["shape_ok"] for o in objs),
      size_ok=all(o["size_ok"] for o in objs),
      cell_ok=cell_ok,
      relation_ok=bool(relation_ok),
      position_ok=bool(cell_ok if int(_get(attrs, "pos_stated")) else relation_ok),
      count_ok=present == n,
  )
  out["all_ok"] = all(out.values())
  out["objects"] = objs
  return out


def check_batch(images, attrs: Mapping[str, np.ndarray], *, value_range=(-1.0, 1.0)) -> dict:
  """Mean of each `check_image` bool over a batch: images [B, H, W, 3], attrs_* [B, ...]."""
  keys = ("color_ok", "shape_ok", "size_ok", "cell_ok", "relation_ok", "position_ok",
          "count_ok", "all_ok")
  totals = {k: 0.0 for k in keys}
  images = np.asarray(images)
  for i in range(images.shape[0]):
    one = {k: np.asarray(v)[i] for k, v in attrs.items()
           if k.removeprefix("attrs_") in ATTR_KEYS}
    res = check_image(images[i], one, value_range=value_range)
    for k in keys:
      totals[k] += float(res[k])
  return {k: v / max(1, images.shape[0]) for k, v in totals.items()}
