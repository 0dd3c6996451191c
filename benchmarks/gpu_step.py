"""DREAM-B/16 train step on the local accelerator at the largest global batch that fits.

  python benchmarks/gpu_step.py [--config=configs/dream_b16.py] [--batches=512,256,128,64]
      [--steps=5] [--remat=dots] [--scan]

Tries the batches in order and keeps the first that compiles and runs (an out-of-memory
error moves on to the next). Inputs are random arrays of the cached-input shapes
(`dream_jax.tools.aot.abstract_batch`: VAE latent moments, T5 features), the frozen
networks are tiny random stand-ins (they never run on cached inputs). Prints the median step
time after one warm-up step, the device's peak memory in use, the analytic useful FLOPs per
step (`aot.flop_report`, mask ratio 0.5) and the MFU against the chip's published bf16 peak.
Run by benchmarks/gpu_check.sh.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "TPU v5p": 459.0,
               "TPU v4": 275.0, "TPU v6": 918.0}


def random_batch(config, mesh):
  from dream_jax.tools import aot
  from dream_jax.train import sharding
  rng = np.random.default_rng(0)
  out = {}
  for k, s in aot.abstract_batch(config, mesh, "cache").items():
    if s.dtype == np.int32:
      a = rng.integers(1, 1000, s.shape).astype(np.int32)
    elif s.dtype == np.bool_:
      a = np.ones(s.shape, bool)
    else:
      a = rng.normal(size=s.shape).astype(np.float32)
    out[k] = a
  return sharding.global_batch(mesh, out)


def try_batch(config, batch_size, steps):
  from dream_jax.tools import aot
  from dream_jax.train.trainer import Trainer
  c = config.copy_and_resolve_references()
  c.batch_size = batch_size
  c.masking.group_size = min(c.masking.group_size, batch_size // jax.device_count())
  tr = Trainer(c)
  state = tr.fresh_state()
  batch = random_batch(c, tr.mesh)
  with jax.set_mesh(tr.mesh):
    t0 = time.perf_counter()
    step = tr.train_step.lower(state, tr.frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(steps + 1):
      s = time.perf_counter()
      state, m = step(state, tr.frozen, batch)
      jax.block_until_ready(m)
      if i:
        times.append(time.perf_counter() - s)
  step_s = float(np.median(times))
  stats = jax.devices()[0].memory_stats() or {}
  useful = aot.flop_report(c, 0.5)["analytic_useful"]
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()), float("nan"))
  return dict(batch=batch_size, device=kind, devices=jax.device_count(), step_s=step_s,
              compile_s=compile_s, loss=float(m["loss"]),
              peak_gib=stats.get("peak_bytes_in_use", float("nan")) / 2 ** 30,
              useful_tflop=useful / 1e12,
              mfu=useful / step_s / (peak * 1e12 * jax.device_count()))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/dream_b16.py")
  p.add_argument("--batches", default="512,256,128,64,32")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--remat", default="dots", choices=("none", "dots", "full"))
  p.add_argument("--scan", action="store_true", default=True)
  p.add_argument("--noscan", dest="scan", action="store_false")
  a = p.parse_args()
  from configs.common import load_config_file
  config = load_config_file(a.config).copy_and_resolve_references()
  config.model.remat, config.model.scan_layers = a.remat, a.scan
  config.tokenizer.tiny_random = config.text.tiny_random = True   # cached inputs: never run
  config.mesh.update(data=1, fsdp=jax.device_count())
  for b in (int(x) for x in a.batches.split(",")):
    try:
      r = try_batch(config, b, a.steps)
    except Exception as e:   # noqa: BLE001 -- XLA reports OOM as several error types
      if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
        print(f"batch {b}: out of memory, trying a smaller one", flush=True)
        continue
      raise
    print(f"{a.config} remat={a.remat} scan={a.scan} on {r['devices']} x {r['device']}: "
          f"largest batch {r['batch']}, step {r['step_s']:.3f} s "
          f"({r['batch'] / r['step_s']:.1f} ex/s), compile {r['compile_s']:.0f} s, peak memory "
          f"{r['peak_gib']:.1f} GiB, useful {r['useful_tflop']:.1f} TFLOP/step, MFU "
          f"{r['mfu']:.1%}, loss {r['loss']:.4f}", flush=True)
    return r
  raise SystemExit("no batch size fitted")


if __name__ == "__main__":
  main()
