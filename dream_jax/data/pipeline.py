"""The grain pipeline every source shares: index -> record -> crop/flip/normalise -> tokens -> batch.

A source is a `RecordSource`: `len(src)` records and `src.load(i, flip) -> dict` that returns
`image` [S, S, 3] uint8 (already centre-cropped to the configured size; flipped when asked)
or, for cached latents, `latent_moments` [2, h, w, c]; a `caption` str; and optional extra
numpy fields (e.g. `attrs_*`). A record that cannot be used raises `SkipRecord(reason)`: the
pipeline then takes the next record (i+1, i+2, ... wrapping around) and counts the reason, so a
corrupt file is never fatal and never silently changes the batch size.

Train stream (per host): `MapDataset.range(n_local).shuffle(seed).repeat()` (grain reshuffles
each epoch with seed + epoch), `map_with_index` (the flip coin is drawn from (seed, stream
position), so a restored iterator reproduces it), read threads, `batch(local_batch)`.
The iterator state is grain's (`{'next_index': k}`, JSON-serialisable); restoring it gives the
identical next batch.

Eval stream (per host): the first `eval_size` records of the eval source, host h taking
global records h, h+P, h+2P, ...; every host produces the same number of batches (padding
slots repeat record 0 with `valid` False), so a multi-host eval loop never deadlocks.

Multi-host: each host builds its own `DataSource(process_index, process_count)` that reads a
disjoint part of the data (covering it together) and yields host-local batches of
`batch_size // process_count`; the trainer assembles the global batch with
`jax.make_array_from_process_local_data(sharding, local_batch)`.
"""
from __future__ import annotations

import collections
import io
import math
import threading
import warnings
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np

MAX_CONSECUTIVE_SKIPS = 1000   # more bad records in a row than this means the source is broken
# data.max_bad_fraction is checked once this many records were read (a few bad records at
# the start of a stream say little about the source).
MIN_RECORDS_FOR_BAD_FRACTION = 100
# Every reason a record can be skipped for (the counters of metrics.jsonl 'data_skipped/*').
REASONS = ("truncated", "undecodable", "empty_image", "too_large", "bad_mode", "missing_image",
           "missing_caption", "empty_caption", "bad_caption_encoding", "bad_json",
           "read_error", "unreadable_record")


class TooManyBadRecords(RuntimeError):
  """More than data.max_bad_fraction of the records read could not be used."""


class SkipRecord(Exception):
  """Raised by `RecordSource.load` for an unusable record; `reason` names the counter."""

  def __init__(self, reason: str, detail: str = ""):
    if reason not in REASONS:
      raise ValueError(f"SkipRecord reason {reason!r} is not one of {REASONS}")
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


class SkipCounter:
  """Thread-safe counts of skipped records by reason (read threads share one instance).

  Counts include records read by prefetching threads ahead of the consumer.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: collections.Counter = collections.Counter()

  def add(self, reason: str, n: int = 1) -> None:
    with self._lock:
      self._counts[reason] += n

  def counts(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)


class RecordSource(Protocol):
  flippable: bool   # False when a flip would contradict the caption (left/right, digits)

  def __len__(self) -> int: ...

  def load(self, i: int, flip: bool) -> dict[str, Any]: ...


class HostSlice:
  """Records h, h+P, h+2P, ... of a source: disjoint across hosts, covering together."""

  def __init__(self, source, process_index: int, process_count: int):
    self.source, self.start, self.step = source, process_index, process_count
    self.flippable = getattr(source, "flippable", True)

  def __len__(self) -> int:
    return len(range(self.start, len(self.source), self.step))

  def load(self, i: int, flip: bool) -> dict[str, Any]:
    return self.source.load(self.start + i * self.step, flip)


def shard_for_host(source, process_index: int, process_count: int):
  """The host's part of `source`: its own `for_host` (e.g. whole tar shards) or a HostSlice."""
  if process_count == 1:
    return source
  if hasattr(source, "for_host"):
    return source.for_host(process_index, process_count)
  return HostSlice(source, process_index, process_count)


# --------------------------------------------------------------------------- transforms
def center_crop_arr(pil_image, image_size: int):
  """ADM / MAR `center_crop_arr`: halve with BOX while >= 2x, bicubic-resize the shorter
  side to `image_size`, centre crop. Returns a PIL image `image_size` x `image_size`."""
  from PIL import Image

  while min(*pil_image.size) >= 2 * image_size:
    pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
  scale = image_size / min(*pil_image.size)
  pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
                               resample=Image.BICUBIC)
  arr = np.array(pil_image)
  crop_y = (arr.shape[0] - image_size) // 2
  crop_x = (arr.shape[1] - image_size) // 2
  return Image.fromarray(arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size])


def to_rgb(pil_image):
  """Converts any convertible PIL mode to RGB; raises SkipRecord('bad_mode') otherwise.

  Alpha is composited on white (transparent logos come out on white, not black); 16-bit and
  float greyscale are rescaled by their actual range; CMYK, palette, YCbCr, LAB, 1-bit and L
  go through PIL's own conversion.
  """
  from PIL import Image

  mode = pil_image.mode
  if mode == "RGB":
    return pil_image
  if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in
                                                     pil_image.info):
    rgba = pil_image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    arr = np.asarray(pil_image, np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / max(hi - lo, 1e-6) * 255.0
    return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
  try:
    return pil_image.convert("RGB")
  except (ValueError, OSError) as e:
    raise SkipRecord("bad_mode", f"{mode}: {e}") from e


def decode_image(data: bytes, image_size: int):
  """Encoded bytes -> centre-cropped PIL RGB image; SkipRecord on any decode failure."""
  from PIL import Image, UnidentifiedImageError

  if not data:
    raise SkipRecord("empty_image")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
      limit = Image.MAX_IMAGE_PIXELS
      if limit and img.size[0] * img.size[1] > limit:   # checked before decoding anything
        raise SkipRecord("too_large", f"{img.size[0]}x{img.size[1]} > {limit} pixels "
                         "(PIL.Image.MAX_IMAGE_PIXELS)")
      img.load()   # forces a full decode, so truncated files fail here
  except UnidentifiedImageError as e:
    raise SkipRecord("undecodable", str(e)) from e
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise SkipRecord("too_large", str(e)) from e
  except (OSError, SyntaxError, ValueError, EOFError) as e:   # truncated / corrupt stream
    raise SkipRecord("truncated", str(e)) from e
  return prepare_pil(img, image_size)


def prepare_pil(img, image_size: int):
  if min(img.size) < 1:
    raise SkipRecord("empty_image")
  return center_crop_arr(to_rgb(img), image_size)


def pil_to_uint8(img, flip: bool) -> np.ndarray:
  arr = np.asarray(img, np.uint8)
  return arr[:, ::-1] if flip else arr


def clean_caption(caption) -> str:
  """bytes/str/None -> stripped str; SkipRecord('empty_caption') when nothing is left."""
  if caption is None:
    raise SkipRecord("missing_caption")
  if isinstance(caption, bytes):
    try:
      caption = caption.decode("utf-8")
    except UnicodeDecodeError as e:
      raise SkipRecord("bad_caption_encoding", str(e)) from e
  caption = str(caption)
  if any("\udc80" <= ch <= "\udcff" for ch in caption):   # surrogate-escaped bad bytes
    raise SkipRecord("bad_caption_encoding", "caption is not valid UTF-8")
  caption = " ".join(caption.split())
  if not caption:
    raise SkipRecord("empty_caption")
  return caption


def to_unit_range(image_u8: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 in [-1, 1] (x / 127.5 - 1)."""
  return image_u8.astype(np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------- tokenization
class CaptionTokens:
  """caption -> clip_ids [ctx] int32 and the generation condition's cond_ids/cond_mask.

  cond_encoder 'small' / 'clip_tower': the condition reuses clip_ids, mask = padding mask;
  't5' / 'minilm': `FrozenTextEncoder(config.text).tokenize` (imported lazily, only then).
  """

  def __init__(self, text_cfg, clip_tokenizer, *, cond: bool = True):
    self.tok = clip_tokenizer
    self.frozen = None
    if cond and text_cfg.cond_encoder in ("t5", "minilm"):
      from dream_jax.pretrained.frozen import FrozenTextEncoder  # lazy: heavy, optional
      self.frozen = FrozenTextEncoder(text_cfg)
    self.cond = cond

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    ids = self.tok.encode([caption])
    out = dict(clip_ids=ids[0].astype(np.int32))
    if not self.cond:
      return out
    if self.frozen is None:
      out["cond_ids"] = out["clip_ids"]
      out["cond_mask"] = np.asarray(self.tok.padding_mask(ids)[0], bool)
    else:
      cids, cmask = self.frozen.tokenize([caption])
      out["cond_ids"] = np.asarray(cids[0], np.int32)
      out["cond_mask"] = np.asarray(cmask[0], bool)
    return out


# ----------------------------------------------------------------------------- pipeline
def load_with_fallback(source, i: int, flip: bool, counter: SkipCounter) -> dict[str, Any]:
  """`source.load(i)`, or the next loadable record after i (wrapping); the record carries
  `_skipped` [len(REASONS)] int32: the records skipped to produce it, by reason (counted by
  the consumer, `CountingIterator`, so read-ahead threads never inflate the counts)."""
  n = len(source)
  skipped = np.zeros(len(REASONS), np.int32)
  for j in range(min(n, MAX_CONSECUTIVE_SKIPS)):
    try:
      rec = source.load((i + j) % n, flip)
      rec["_skipped"] = skipped
      return rec
    except SkipRecord as e:
      counter.add(e.reason)
      skipped[REASONS.index(e.reason)] += 1
  raise TooManyBadRecords(
      f"{min(n, MAX_CONSECUTIVE_SKIPS)} consecutive records could not be used (skip counts "
      f"so far: {counter.counts()}); is the source broken?")


class CountingIterator:
  """A grain iterator of batches whose `_skipped` field is summed into exact counts of the
  records consumed (not read ahead), kept in the iterator state across checkpoints.

  State (JSON): {'grain': grain's state, 'skipped': {reason: n}, 'records': n} where records
  = usable + skipped records behind the consumed batches. Raises TooManyBadRecords when more
  than `max_bad_fraction` of them were bad (after MIN_RECORDS_FOR_BAD_FRACTION records).
  """

  def __init__(self, it, *, max_bad_fraction: float, base_counts: Mapping | None = None):
    self._it = it
    self.max_bad_fraction = max_bad_fraction
    self.base = dict(base_counts or {})   # index-time counts (e.g. lost in truncated shards)
    self.counts: dict[str, int] = {}
    self.records = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._it))
    skipped = np.asarray(batch.pop("_skipped")).reshape(-1, len(REASONS)).sum(0)
    for r, n in zip(REASONS, skipped):
      if n:
        self.counts[r] = self.counts.get(r, 0) + int(n)
    self.records += int(len(next(iter(batch.values())))) + int(skipped.sum())
    bad = sum(self.counts.values())
    if self.records >= MIN_RECORDS_FOR_BAD_FRACTION and bad > self.max_bad_fraction * self.records:
      raise TooManyBadRecords(
          f"data: {bad} of the {self.records} records read could not be used "
          f"({100 * bad / self.records:.1f}% > data.max_bad_fraction="
          f"{self.max_bad_fraction:g}); by reason: {self.skip_counts()}")
    return batch

  def skip_counts(self) -> dict[str, int]:
    out = dict(self.base)
    for k, v in self.counts.items():
      out[k] = out.get(k, 0) + v
    return out

  def get_state(self) -> dict:
    return dict(grain=self._it.get_state(), skipped=dict(self.counts), records=self.records)

  def set_state(self, state: Mapping) -> None:
    state = dict(state)
    if "grain" not in state:        # a checkpoint from before the counts were kept
      state = dict(grain=state, skipped={}, records=0)
    self._it.set_state(dict(state["grain"]))
    self.counts = {k: int(v) for k, v in dict(state["skipped"]).items()}
    self.records = int(state["records"])


class DataSource:
  """What `make_dataset` returns.

  `iterator(start_state=None)` -> a grain iterator over host-local batches (dicts of numpy
  arrays, see `dream_jax.data` for the keys); `it.get_state()` / `it.set_state(s)` are
  JSON-serialisable. `num_examples`: records this host reads per epoch (eval: valid examples
  on this host). `info`: dict(image_size, vocab, local_batch, global_batch, ...).
  `skip_counts()`: records skipped on this host so far, by reason (sum over hosts to log).
  """

  def __init__(self, dataset, *, num_examples: int, info: dict, counter: SkipCounter,
               max_bad_fraction: float = 1.0, index_counts: Mapping | None = None):
    self._dataset = dataset
    self.num_examples = num_examples
    self.info = info
    self._counter = counter
    self.max_bad_fraction = max_bad_fraction
    self.index_counts = dict(index_counts or {})
    self._last: CountingIterator | None = None

  def iterator(self, start_state: Mapping | None = None) -> CountingIterator:
    it = CountingIterator(iter(self._dataset), max_bad_fraction=self.max_bad_fraction,
                          base_counts=self.index_counts)
    if start_state is not None:
      it.set_state(start_state)
    self._last = it
    return it

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iterator()

  def skip_counts(self) -> dict[str, int]:
    """Records skipped behind the batches consumed from the latest `iterator()` (exact,
    restored with its state), plus the source's index-time counts (`index_counts`: records
    known lost in truncated shards, keys without an image, ...)."""
    if self._last is None:
      return dict(self.index_counts)
    return self._last.skip_counts()


def build_pipeline(source, *, split: str, local_batch: int, eval_size: int, seed: int,
                   process_index: int, process_count: int, num_threads: int,
                   random_flip: bool, to_example: Callable[[dict], dict],
                   info: dict, max_bad_fraction: float = 1.0) -> DataSource:
  """Wires a RecordSource into the grain train or eval stream described in the module doc.

  `to_example(record) -> dict of numpy arrays` finishes one record (normalise, tokenize).
  For 'train', `source` is already this host's part; for 'eval' it is the whole eval
  source (this function takes records h, h+P, ...).
  """
  import grain

  counter = SkipCounter()
  index_counts = dict(getattr(source, "index_skips", lambda: {})())
  extra = dict(max_bad_fraction=max_bad_fraction, index_counts=index_counts)
  read = grain.ReadOptions(num_threads=max(1, num_threads),
                           prefetch_buffer_size=max(2 * local_batch, 16))
  if split == "train":
    n = len(source)
    if n == 0:
      raise ValueError("this host's part of the training data is empty")
    flip_ok = random_flip and getattr(source, "flippable", True)

    def element(pos: int, i: int) -> dict:
      flip = flip_ok and np.random.default_rng([seed, 7, pos]).random() < 0.5
      return to_example(load_with_fallback(source, int(i), bool(flip), counter))

    ds = (grain.MapDataset.range(n).shuffle(seed=seed % 2**32).repeat(None)
          .map_with_index(element))
    it_ds = ds.to_iter_dataset(read).batch(local_batch, drop_remainder=True)
    return DataSource(it_ds, num_examples=n, info=dict(info, local_batch=local_batch),
                      counter=counter, **extra)

  total = min(eval_size, len(source))
  if total == 0:
    raise ValueError("the eval source is empty")
  per_host = math.ceil(total / process_count)
  batch = min(local_batch, per_host)
  slots = math.ceil(per_host / batch) * batch

  def eval_element(k: int) -> dict:
    g = process_index + k * process_count
    valid = g < total
    ex = to_example(load_with_fallback(source, g if valid else 0, False, counter))
    ex["valid"] = np.asarray(valid)
    if not valid:   # padding repeats record 0: its skips were counted in its own slot
      ex["_skipped"] = np.zeros(len(REASONS), np.int32)
    return ex

  ds = grain.MapDataset.range(slots).map(eval_element)
  it_ds = ds.to_iter_dataset(read).batch(batch, drop_remainder=True)
  valid_here = len(range(process_index, total, process_count))
  return DataSource(it_ds, num_examples=valid_here,
                    info=dict(info, local_batch=batch, num_batches=slots // batch),
                    counter=counter, **extra)
