"""Encode then decode a natural image through the Flax SD-VAE, fp32 and bf16, on this CPU.

  python benchmarks/vae_roundtrip.py [--size=256] [--batch=1] [--repeats=3] [--tiny]

Image: scikit-learn's `load_sample_images()` china.jpg (427x640), centre-cropped to a square
and resized to --size, scaled to [-1, 1]. Network: the full sd-vae-ft-ema architecture
(83.7M params) with RANDOM weights (no released weights are available offline), so the
reconstruction is not meaningful; the numbers are the cost of the real architecture and the
bf16-vs-fp32 agreement. `--tiny` uses the runlocal stand-in instead.

Prints per dtype: compile time, steady-state encode / decode / round-trip time (median of
--repeats), latent shape, and the max relative difference of bf16 against fp32.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dream_jax.pretrained import vae  # noqa: E402


def load_china(size: int) -> np.ndarray:
  """china.jpg -> [1, size, size, 3] float32 in [-1, 1]."""
  from sklearn.datasets import load_sample_images
  data = load_sample_images()
  img = data.images[[os.path.basename(f) for f in data.filenames].index("china.jpg")]
  h, w, _ = img.shape
  s = min(h, w)
  crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
  crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
  return (crop.astype(np.float32) / 127.5 - 1.0)[None]


def timed(fn, *args, repeats: int):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return out, first, float(np.median(times))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--tiny", action="store_true")
  args = p.parse_args()

  cfg = vae.TINY_VAE_CONFIG if args.tiny else vae.SD_VAE_CONFIG
  images = np.repeat(load_china(args.size), args.batch, axis=0)
  params = vae.SDVAE(cfg).init_params(jax.random.key(0))
  n_params = sum(np.size(a) for a in jax.tree.leaves(params))
  print(f"device: {jax.devices()[0].device_kind} x{os.cpu_count()} cores | "
        f"VAE {'tiny' if args.tiny else 'sd-vae-ft-ema'} arch, {n_params / 1e6:.2f}M params "
        f"(random) | image china.jpg {images.shape}")
  results = {}
  for dtype in ("float32", "bfloat16"):
    model = vae.SDVAE(cfg, dtype=dtype)
    p_dtype = model.cast_params(params) if dtype == "bfloat16" else params
    rt = jax.jit(lambda p, x, r: model.decode(p, model.sample(model.encode(p, x), r)
                                             / model.scale_factor))
    rng = jax.random.key(1)
    moments, enc_first, enc_t = timed(model.encode, p_dtype, images, repeats=args.repeats)
    mean = moments[:, 0]
    recon, dec_first, dec_t = timed(model.decode, p_dtype, mean, repeats=args.repeats)
    _, rt_first, rt_t = timed(rt, p_dtype, images, rng, repeats=args.repeats)
    results[dtype] = (np.asarray(moments), np.asarray(recon))
    print(f"{dtype:>8}: encode {enc_t:6.2f} s (first call incl. compile {enc_first:6.2f} s) | "
          f"decode {dec_t:6.2f} s (first {dec_first:6.2f} s) | "
          f"encode+sample+decode {rt_t:6.2f} s (first {rt_first:6.2f} s) | "
          f"latents {tuple(mean.shape)} | recon range [{float(recon.min()):.2f}, "
          f"{float(recon.max()):.2f}] finite={bool(np.isfinite(recon).all())}")
  (m32, r32), (m16, r16) = results["float32"], results["bfloat16"]
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  print(f"bf16 vs fp32 max rel diff: latent mean {rel(m16[:, 0], m32[:, 0]):.3e}, "
        f"decoded image {rel(r16, r32):.3e}")


if __name__ == "__main__":
  main()
