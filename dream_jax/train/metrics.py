"""Metric writers: `W/metrics.jsonl` always; TensorBoard too when TF + tensorboard import.

Only process 0 writes. clu's metric writers import tensorflow at module import (env_probe
section 5.1), so they are imported lazily and skipped quietly when unavailable.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from absl import logging


def _scalar(v):
  v = np.asarray(v)
  if v.size != 1:
    return None
  v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)            # JSON has no NaN / inf literals
  return v


class MetricWriter:
  """`write(step, scalars)` appends one JSON line {'step': s, **scalars}; TensorBoard mirror.

  `keep_upto`: the step the run resumes from (-1: a fresh run). Rows of later steps (written
  by a run killed before its next checkpoint, which the resumed run writes again) and a
  partial last line are dropped first (atomic rewrite), so no step has duplicate rows.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, keep_upto: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if keep_upto is not None:
      truncate_after(workdir, keep_upto)
    self._file = open(self.path, "a")
    if tensorboard:
      try:
        import tensorflow  # noqa: F401  (clu.metric_writers needs it)
        from clu import metric_writers
        self._tb = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
      except Exception:   # noqa: BLE001  TF/tensorboard are optional; skip quietly
        self._tb = None

  def write(self, step: int, scalars: dict) -> dict:
    row = {k: _scalar(v) for k, v in scalars.items()}
    row = {k: v for k, v in row.items() if v is not None}
    if not self.enabled:
      return row
    self._file.write(json.dumps(dict(step=int(step), **row)) + "\n")
    self._file.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), {k: v for k, v in row.items()
                                         if isinstance(v, (int, float))})
    return row

  def close(self):
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.flush()


def read_metrics(workdir: str) -> list[dict]:
  """Every complete row of W/metrics.jsonl (a partial last line of a killed run is skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def truncate_after(workdir: str, step: int) -> int:
  """Keeps the rows with row['step'] <= step (atomically); returns how many were dropped."""
  from dream_jax.train.workdir import atomic_write_text
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if int(row.get("step", -1)) <= step:
      keep.append(json.dumps(row) + "\n")
  if len(keep) != len(lines):
    atomic_write_text(path, "".join(keep))
    logging.info("metrics.jsonl: dropped %d rows after step %d (replayed by this run)",
                 len(lines) - len(keep), step)
  return len(lines) - len(keep)


class Progress:
  """Console progress line: step, loss, steps/s, examples/s, ETA."""

  def __init__(self, total_steps: int, batch_size: int, first_step: int = 0):
    self.total, self.batch = total_steps, batch_size
    self._t0, self._s0 = time.perf_counter(), first_step
    self._tlast, self._slast = self._t0, first_step

  def rates(self, step: int) -> dict:
    now = time.perf_counter()
    dt, ds = now - self._tlast, step - self._slast
    sps = ds / dt if dt > 0 and ds > 0 else float("nan")
    self._tlast, self._slast = now, step
    avg = (step - self._s0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / avg if avg > 0 else float("nan")
    return dict(steps_per_sec=sps, examples_per_sec=sps * self.batch, eta_sec=eta)

  def line(self, step: int, row: dict) -> str:
    keys = ("loss", "loss_diffusion", "loss_contrastive", "mask_center", "lr")
    parts = [f"step {step}/{self.total}"]
    parts += [f"{k} {row[k]:.4g}" for k in keys if isinstance(row.get(k), float)]
    if isinstance(row.get("steps_per_sec"), float) and math.isfinite(row["steps_per_sec"]):
      parts.append(f"{row['steps_per_sec']:.2f} st/s")
    if isinstance(row.get("eta_sec"), float) and math.isfinite(row["eta_sec"]):
      parts.append(f"ETA {row['eta_sec']:.0f}s")
    return " | ".join(parts)

  def print(self, step: int, row: dict):
    if jax.process_index() == 0:
      msg = self.line(step, row)
      logging.info(msg)
      print(msg, file=sys.stderr, flush=True)
