"""This machine's fp32 matmul rate under XLA, measured in the calling process.

  python benchmarks/gemm_rate.py            # the rate at a few sizes, and the peak

A benchmark that reports a "floor" (its program's matmul FLOPs divided by the best matmul
rate this machine reaches) calls `peak_gflops()` in the same run as the program it times,
so the floor and the measured times come from one machine under one load. Each size runs
`reps` chained products inside one jitted loop (every product feeds the next, so XLA cannot
hoist it out of the loop); the best of three timings counts. The elementwise update that
chains the products adds m*k FLOP-free work per product, so the rate is a slight
underestimate for the small sizes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_jax.utils import xla_cpu  # noqa: E402

if __name__ == "__main__":
  xla_cpu.use_default_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# (m, k, n): a large square product and the step programs' typical shapes at the anchor
# sizes (token rows x width x 3 width, the diffusion head's rows x 256 x 768).
SIZES = ((2048, 2048, 2048), (1536, 256, 768), (1536, 1024, 256), (192, 256, 768),
         (128, 256, 256))


def gflops(m: int, k: int, n: int, reps: int = 40, timings: int = 3) -> float:
  """Best fp32 rate (GFLOP/s, 2 FLOPs per multiply-add) of [m, k] @ [k, n] under jit."""
  a = jnp.full((m, k), 1e-2, jnp.float32)
  b = jnp.full((k, n), 1e-2, jnp.float32)

  def body(_, a):
    c = a @ b                                                  # [m, n]
    c = c[:, :k] if n >= k else jnp.tile(c, (1, -(-k // n)))[:, :k]
    return a + 1e-6 * c                                        # the next product needs it

  run = jax.jit(lambda a: jax.lax.fori_loop(0, reps, body, a))
  jax.block_until_ready(run(a))
  best = float("inf")
  for _ in range(timings):
    t0 = time.perf_counter()
    jax.block_until_ready(run(a))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * m * k * n * reps / best / 1e9


def peak_gflops(sizes=SIZES) -> tuple[float, dict]:
  """(the best rate over `sizes`, {size: rate})."""
  rates = {s: gflops(*s) for s in sizes}
  return max(rates.values()), rates


def main(argv=None):
  p = argparse.ArgumentParser()
  p.parse_args(argv)
  peak, rates = peak_gflops()
  for (m, k, n), r in rates.items():
    print(f"[{m} x {k}] @ [{k} x {n}]: {r:.1f} GFLOP/s")
  print(f"peak {peak:.1f} GFLOP/s fp32 on {os.cpu_count()} CPUs "
        f"({jax.devices()[0].device_kind})")


if __name__ == "__main__":
  main()
