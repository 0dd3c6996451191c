"""Precomputed latents and text features: `python -m dream_jax.data.cache` and `CacheSource`.

    python -m dream_jax.data.cache --config=configs/dream_b16.py --out=/data/cc12m_cache \\
        [--config.data.path=...] [--split=train] [--num_shards=1000] [--batch_size=64] \\
        [--max_examples=0] [--dtype=float16]

For every usable record of the configured source (in source order, bad records skipped and
counted, never replaced) it stores, per example, one array_record entry (an `np.savez` blob):
  latent_moments  [2, 2, h, w, c]  VAE posterior (mean, logvar) of the centre crop [0] and of
                                   its horizontal flip [1] (`ImageTokenizerVAE.encode_moments`)
  clip_ids        [ctx] int32      CLIP-tower tokens
  cond_embeddings [Lc, Dc], cond_mask [Lc] bool   (frozen T5 / MiniLM: `FrozenTextEncoder`)
  or cond_ids [Lc] int32, cond_mask [Lc] bool     (trainable condition encoders)
Float arrays are stored in `--dtype` (float16 halves the size; T5-Large features of CC12M
are ~6 TB in float32) and come back as float32.

Layout: DIR/meta.json (shapes, dtypes, tokenizer settings) and DIR/shard-SSSSS-of-NNNNN
.array_record, each followed by a `.done` JSON marker (records, skips by reason) once
complete. A rerun skips finished shards and rewrites unfinished ones, so an interrupted run
resumes; with several processes (`--process_index/--process_count`, default jax's) process
p writes shards p, p+P, ... Then train with `c.data.name='cache'`, `c.data.path=DIR`: the
pipeline picks the flip at random (`data.random_flip`) and samples the posterior in the step.
"""
from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Any

import numpy as np

from dream_jax.data.pipeline import SkipCounter, SkipRecord, CaptionTokens

FORMAT_VERSION = 1
_TEXT_KEYS = ("tokenizer", "context_length", "cond_encoder", "cond_len", "cond_dim")


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(data)) as z:
    return {k: z[k] for k in z.files}


def shard_name(s: int, n: int) -> str:
  return f"shard-{s:05d}-of-{n:05d}.array_record"


class CacheSource:
  """Reads a cache directory: `load(i, flip)` -> latent_moments [2, h, w, c] float32 (the
  flip's), clip_ids, cond_embeddings/cond_ids + cond_mask. Only finished shards are read."""

  has_tokens = True

  def __init__(self, path: str):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    meta_path = os.path.join(path, "meta.json")
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f"{meta_path} missing: build the cache with "
                              "`python -m dream_jax.data.cache --config=... --out=DIR`")
    with open(meta_path) as f:
      self.meta = json.load(f)
    n = self.meta["num_shards"]
    files = [os.path.join(path, shard_name(s, n)) for s in range(n)]
    done = [p for p in files if os.path.exists(p + ".done")]
    if len(done) < n:
      print(f"dream_jax.data.cache: {path}: reading {len(done)} of {n} finished shards")
    self._files = done
    self.flippable = bool(self.meta.get("flippable", True))
    self._ds = ArrayRecordDataSource(done) if done else None

  def check_config(self, config) -> None:
    """Errors naming the key when the cache was built with other text/image settings."""
    for k in _TEXT_KEYS:
      want, have = self.meta["text"].get(k), config.text.get(k)
      if want != have:
        raise ValueError(f"config.text.{k}={have!r} but the cache was built with {want!r}")
    if self.meta["image_size"] != config.data.image_size:
      raise ValueError(f"config.data.image_size={config.data.image_size} but the cache holds "
                       f"{self.meta['image_size']} px crops")

  def __len__(self) -> int:
    return 0 if self._ds is None else len(self._ds)

  def load(self, i: int, flip: bool) -> dict[str, Any]:
    try:
      rec = _unpack(self._ds[int(i)])
    except Exception as e:  # corrupt entry
      raise SkipRecord("unreadable_record", str(e)) from e
    out = dict(latent_moments=rec.pop("latent_moments")[int(flip)].astype(np.float32))
    for k, v in rec.items():
      out[k] = v.astype(np.float32) if v.dtype.kind == "f" else v
    return out


def _progress(total: int, desc: str):
  try:
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="ex", smoothing=0.1)
  except ImportError:  # pragma: no cover
    class _Plain:
      def update(self, n):
        pass

      def close(self):
        pass
    return _Plain()


def build_cache(config, out: str, *, split: str = "train", num_shards: int = 0,
                batch_size: int = 64, max_examples: int = 0, dtype: str = "float16",
                process_index: int = 0, process_count: int = 1,
                progress: bool = True) -> dict:
  """Writes (or resumes) the cache described in the module doc. Returns a summary dict
  (shards written / skipped as finished, records, skips by reason)."""
  import jax
  import jax.numpy as jnp
  from array_record.python.array_record_module import ArrayRecordWriter

  from dream_jax.data import _open_source, text_tokenizer
  from dream_jax.pretrained.frozen import ImageTokenizerVAE

  source, _ = _open_source(config, split)
  n = len(source) if not max_examples else min(max_examples, len(source))
  num_shards = num_shards or max(1, math.ceil(n / 10_000))
  os.makedirs(out, exist_ok=True)
  store = np.dtype(dtype)

  vae = ImageTokenizerVAE(config.tokenizer)
  vae_params = vae.load_params()
  encode = jax.jit(vae.encode_moments)
  tokens = CaptionTokens(config.text, text_tokenizer(config))
  frozen = tokens.frozen
  if frozen is not None:
    text_params = frozen.load_params()
    embed = jax.jit(frozen.apply)

  meta = dict(format_version=FORMAT_VERSION, num_shards=num_shards, num_source_records=n,
              image_size=int(config.data.image_size), split=split, source=config.data.name,
              dtype=store.name, text={k: config.text.get(k) for k in _TEXT_KEYS},
              cond="embeddings" if frozen is not None else "ids",
              latent=dict(stride=vae.stride, channels=vae.latent_channels),
              flippable=bool(getattr(source, "flippable", True)))
  if process_index == 0:
    tmp = os.path.join(out, f"meta.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(out, "meta.json"))

  summary = dict(written=0, finished_before=0, records=0, skips={})
  mine = list(range(process_index, num_shards, process_count))
  bar = _progress(n * len(mine) // num_shards, "cache") if progress else None

  def flush(writer, images, texts, extras):
    # Pad to `batch_size` so the VAE and the text encoder compile once.
    b, pad = len(images), batch_size - len(images)
    x = np.stack(images + images[-1:] * pad).astype(np.float32) / 127.5 - 1.0
    both = np.asarray(encode(vae_params, jnp.asarray(np.concatenate([x, x[:, :, ::-1]]))))
    moments = np.stack([both[:b], both[batch_size: batch_size + b]], axis=1)  # [b,2,2,h,w,c]
    toks = [tokens(t) for t in texts]
    if frozen is not None:
      ids = np.stack([t["cond_ids"] for t in toks + toks[-1:] * pad])
      mask = np.stack([t["cond_mask"] for t in toks + toks[-1:] * pad])
      feats = np.asarray(embed(text_params, jnp.asarray(ids), jnp.asarray(mask)))[:b]
    for k in range(len(images)):
      rec = dict(latent_moments=moments[k].astype(store), clip_ids=toks[k]["clip_ids"],
                 cond_mask=toks[k]["cond_mask"])
      if frozen is not None:
        rec["cond_embeddings"] = feats[k].astype(store)
      else:
        rec["cond_ids"] = toks[k]["cond_ids"]
      rec.update(extras[k])       # e.g. attrs_* of the shapes data, MNIST labels
      writer.write(_pack(rec))

  for s in mine:
    path = os.path.join(out, shard_name(s, num_shards))
    lo, hi = s * n // num_shards, (s + 1) * n // num_shards
    if os.path.exists(path + ".done"):
      summary["finished_before"] += 1
      if bar is not None:
        bar.update(hi - lo)
      continue
    counter = SkipCounter()
    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    images, texts, extras, count = [], [], [], 0
    for i in range(lo, hi):
      try:
        rec = source.load(i, False)
      except SkipRecord as e:
        counter.add(e.reason)
        continue
      images.append(rec.pop("image"))
      texts.append(rec.pop("caption"))
      extras.append({k: np.asarray(v) for k, v in rec.items()})
      if len(images) == batch_size:
        flush(writer, images, texts, extras)
        count += len(images)
        if bar is not None:
          bar.update(len(images))
        images, texts, extras = [], [], []
    if images:
      flush(writer, images, texts, extras)
      count += len(images)
    writer.close()
    os.replace(tmp, path)
    with open(path + ".done", "w") as f:
      json.dump(dict(records=count, skips=counter.counts(), time=time.time()), f)
    if bar is not None:
      bar.update(hi - lo - count)
    summary["written"] += 1
    summary["records"] += count
    for k, v in counter.counts().items():
      summary["skips"][k] = summary["skips"].get(k, 0) + v
  if bar is not None:
    bar.close()
  return summary


def main(argv):
  del argv
  from absl import flags

  import jax

  f = flags.FLAGS
  pi = jax.process_index() if f.process_index < 0 else f.process_index
  pc = jax.process_count() if f.process_count < 0 else f.process_count
  summary = build_cache(f.config, f.out, split=f.split, num_shards=f.num_shards,
                        batch_size=f.batch_size, max_examples=f.max_examples, dtype=f.dtype,
                        process_index=pi, process_count=pc)
  print(json.dumps(summary))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Training config (its data and text).")
  flags.DEFINE_string("out", None, "Output cache directory.")
  flags.DEFINE_string("split", "train", "'train' or 'eval' source of the config.")
  flags.DEFINE_integer("num_shards", 0, "Output shards (0: one per 10k records).")
  flags.DEFINE_integer("batch_size", 64, "Images per VAE / text-encoder call.")
  flags.DEFINE_integer("max_examples", 0, "Cache only the first N source records (0: all).")
  flags.DEFINE_string("dtype", "float16", "Storage dtype of float arrays.")
  flags.DEFINE_integer("process_index", -1, "This process (-1: jax.process_index()).")
  flags.DEFINE_integer("process_count", -1, "Processes (-1: jax.process_count()).")
  flags.mark_flags_as_required(["config", "out"])
  app.run(main)
