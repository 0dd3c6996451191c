"""Input-pipeline throughput: raw JPEG shards vs cached latents, against what B/16 consumes.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--threads=2] [--images=256]

It writes WebDataset shards of ~256 px JPEGs (sizes 256x256 .. 384x320, so the centre crop
resizes most of them) with ~12-word captions into a temp dir, and a cache directory with
synthetic records of the B/16 shapes (latent moments of crop + flip [2, 2, 32, 32, 4] and
T5-Large features [128, 1024], float16 on disk), then times `make_dataset(...)` batches:
  1. 'wds': read + JPEG decode + centre crop to 256 + flip + normalise + CLIP-BPE tokenize;
  2. 'cache': read + unpack + float32 cast of the cached arrays.
Printed: examples/s per host for each, after one warm-up batch.

What a DREAM-B/16 step consumes per host (the arithmetic, also printed):
  flops_per_example = 1.97e12 / 4 ~ 4.9e11 (fwd+bwd of the official B/16 step, batch 4;
                      docs/PERF_ANCHOR.md), + ~2.7e11 for the SD-VAE encoder at 256 px
                      when images are raw (fwd only; none with cached latents);
  examples/s/chip   = chip_flops * MFU / flops_per_example;
  examples/s/host   = chips_per_host * examples/s/chip.
  Defaults: 4 chips/host at 197e12 bf16 FLOP/s (TPU v5e-like; an 8x A100 host is ~2x more)
  and 40% MFU -> raw: 4 * 197e12 * 0.4 / 7.6e11 ~ 415 ex/s/host; cached:
  4 * 197e12 * 0.4 / 4.9e11 ~ 640 ex/s/host. At the paper's global batch 2048 that is one
  step every ~4.9 s (raw) / ~3.2 s (cached) on 4 hosts. A host's pipeline must beat that
  rate with the CPU cores it has: JPEG decode+crop is ~2-5 ms/image/core, so a TPU host
  (100+ cores) keeps up with threads; this 2-core machine only shows the per-core cost.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs.common import base_config  # noqa: E402

B16_FLOPS_PER_EXAMPLE = 1.97e12 / 4   # official B/16 training step, batch 4 (docs/PERF_ANCHOR.md)
VAE_ENC_FLOPS_256 = 2.7e11            # SD-VAE encoder forward at 256x256 (approximate)
WORDS = ("a photo of the red blue small large dog cat house tree city street beach "
         "mountain person car sunset over with in on near old new view night").split()


def _jpeg(rng, w, h) -> bytes:
  from PIL import Image

  low = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
  img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
  arr = np.asarray(img, np.int16) + rng.integers(-12, 12, (h, w, 3))
  buf = io.BytesIO()
  Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def write_shards(d: str, n: int, per_shard: int = 64) -> str:
  rng = np.random.default_rng(0)
  for s in range(0, n, per_shard):
    with tarfile.open(os.path.join(d, f"{s // per_shard:05d}.tar"), "w") as tar:
      for k in range(s, min(n, s + per_shard)):
        w, h = int(rng.integers(256, 385)), int(rng.integers(256, 321))
        cap = " ".join(rng.choice(WORDS, 12)).encode()
        for ext, data in (("jpg", _jpeg(rng, w, h)), ("txt", cap)):
          info = tarfile.TarInfo(f"{k:08d}.{ext}")
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  return os.path.join(d, "*.tar")


def write_cache(d: str, n: int) -> None:
  import json

  from array_record.python.array_record_module import ArrayRecordWriter

  from dream_jax.data.cache import FORMAT_VERSION, _TEXT_KEYS, _pack, shard_name

  c = base_config()
  rng = np.random.default_rng(0)
  meta = dict(format_version=FORMAT_VERSION, num_shards=1, num_source_records=n,
              image_size=256, split="train", source="wds", dtype="float16",
              text={k: c.text.get(k) for k in _TEXT_KEYS}, cond="embeddings",
              latent=dict(stride=8, channels=4), flippable=True)
  with open(os.path.join(d, "meta.json"), "w") as f:
    json.dump(meta, f)
  path = os.path.join(d, shard_name(0, 1))
  w = ArrayRecordWriter(path, "group_size:1")
  for _ in range(n):
    w.write(_pack(dict(
        latent_moments=rng.standard_normal((2, 2, 32, 32, 4)).astype(np.float16),
        clip_ids=rng.integers(0, 49408, 77).astype(np.int32),
        cond_embeddings=rng.standard_normal((128, 1024)).astype(np.float16),
        cond_mask=np.ones(128, bool))))
  w.close()
  open(path + ".done", "w").write("{}")


def rate(config, batches: int) -> tuple[float, dict]:
  from dream_jax.data import make_dataset

  ds = make_dataset(config, "train", process_index=0, process_count=1)
  it = ds.iterator()
  next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return config.batch_size * batches / (time.perf_counter() - t), ds.skip_counts()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--images", type=int, default=256)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--chips_per_host", type=int, default=4)
  p.add_argument("--chip_flops", type=float, default=197e12)
  p.add_argument("--mfu", type=float, default=0.4)
  a = p.parse_args()
  batches = max(1, a.images // a.batch - 1)
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    pattern = write_shards(d, a.images)
    print(f"wrote {a.images} JPEGs in {time.perf_counter() - t:.1f} s "
          f"({sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) / a.images / 1e3:.0f}"
          " KB/example incl. caption)")
    c = base_config()
    c.batch_size = a.batch
    c.text.cond_encoder = "small"      # tokenize once (CLIP BPE); T5 tokenization is extra
    c.data.update(name="wds", path=pattern, image_size=256, num_workers=a.threads)
    wds_rate, skips = rate(c, batches)
    cdir = os.path.join(d, "cache")
    os.makedirs(cdir)
    write_cache(cdir, a.images)
    c.data.update(name="cache", path=cdir)
    c.text.cond_encoder = "t5"
    cache_rate, _ = rate(c, batches)
  need_raw = a.chips_per_host * a.chip_flops * a.mfu / (B16_FLOPS_PER_EXAMPLE + VAE_ENC_FLOPS_256)
  need_cached = a.chips_per_host * a.chip_flops * a.mfu / B16_FLOPS_PER_EXAMPLE
  print(f"wds   decode+crop256+flip+tokenize: {wds_rate:8.1f} examples/s/host "
        f"({a.threads} threads; {wds_rate / a.threads:.1f} per thread) skips={skips}")
  print(f"cache read+unpack (B/16 shapes):    {cache_rate:8.1f} examples/s/host")
  print(f"B/16 consumes per host: raw images {need_raw:.0f} ex/s, cached latents "
        f"{need_cached:.0f} ex/s  (= {a.chips_per_host} chips x {a.chip_flops:.3g} FLOP/s x "
        f"{a.mfu} MFU / ({B16_FLOPS_PER_EXAMPLE:.2g} [+ {VAE_ENC_FLOPS_256:.2g} VAE] "
        "FLOP/example))")
  print(f"=> cores needed for raw JPEG input at that rate: ~{need_raw / max(wds_rate / a.threads, 1e-9):.0f}")


if __name__ == "__main__":
  main()
