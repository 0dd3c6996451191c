"""XLA:CPU options for CPU runs, set in XLA_FLAGS before jax creates its CPU backend.

`--xla_cpu_use_onednn=true` (oneDNN for XLA:CPU's matmuls). Measured 2026-12-01 on this
repository's 2-core Xeon host, quiet, our side only, XLA_FLAGS set by hand:

  benchmarks/train_step.py --shapes=anchor --rounds=1 --reps=4   1.410 s -> 1.320 s per step
                                                                  (user CPU 2.84 -> 2.53 s)
  benchmarks/sampling.py --shapes=anchor --modes=plain --rounds=2 4.208 s -> 3.980 s

The official-parity, diffusion and model-core tests pass under it, and tests/conftest.py
sets it too, so the whole suite checks the numerics it gives. Tried, no gain:
`--xla_cpu_enable_concurrency_optimized_scheduler=true` (1.427 s, 4.094 s).

A flag the user already has in XLA_FLAGS wins (`--xla_cpu_use_onednn=false` turns it off);
`DREAM_NO_XLA_CPU_FLAGS=1` adds nothing. The flags only change how XLA:CPU compiles, so they
are harmless in GPU/TPU runs.
"""
from __future__ import annotations

import os
from typing import MutableMapping

OPT_OUT = "DREAM_NO_XLA_CPU_FLAGS"
DEFAULT_FLAGS = ("--xla_cpu_use_onednn=true",)


def with_default_flags(xla_flags: str, defaults=DEFAULT_FLAGS) -> str:
  """`xla_flags` plus every default whose flag name it does not already set."""
  flags = xla_flags.split()
  names = {f.split("=", 1)[0] for f in flags}
  return " ".join(flags + [d for d in defaults if d.split("=", 1)[0] not in names])


def use_default_flags(environ: MutableMapping[str, str] = os.environ) -> None:
  """Adds the defaults to environ['XLA_FLAGS'] (unless opted out). Call it before jax runs
  anything: XLA reads XLA_FLAGS once, when the first backend is created."""
  if environ.get(OPT_OUT):
    return
  environ["XLA_FLAGS"] = with_default_flags(environ.get("XLA_FLAGS", ""))
