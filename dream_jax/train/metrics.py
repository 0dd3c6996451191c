"""Metric writers: `W/metrics.jsonl` always; TensorBoard too when TF + tensorboard import.

Only process 0 writes. clu's metric writers import tensorflow at module import (env_probe
section 5.1), so they are imported lazily and skipped quietly when unavailable.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
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
      except json.JSONDecodeError:   # a line cut by a kill mid-write
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


# Evaluator metrics shown on the console and in the final summary (last path component).
HEADLINE = ("r1_i2t", "r1_t2i", "z_info@0.9", "color_ok", "cell_ok", "all_ok", "top1",
            "accuracy", "fid", "fd_proxy", "clip_score", "miou", "rmse")


def _duration(sec: float) -> str:
  """Seconds -> '42s' | '3m05s' | '1h02m'."""
  sec = max(0, int(round(sec)))
  if sec < 60:
    return f"{sec}s"
  if sec < 3600:
    return f"{sec // 60}m{sec % 60:02d}s"
  return f"{sec // 3600}h{sec % 3600 // 60:02d}m"


class Progress:
  """The console lines of a run (process 0 only; printed once, to stdout):

    step 25/500 | loss 2.27 | diff 0.0368 | clip 3.11 | mask 0.12 | lr 0.001 | 1.8 st/s | ETA 4m24s

  The ETA is (remaining steps) x (mean step time), where the step time leaves out the first
  step of this process (it includes compilation) and any time spent inside `paused()`
  (evaluations, sample grids, checkpoint saves), which the trainer wraps around them.
  """

  KEYS = (("loss", "loss"), ("loss_diffusion", "diff"), ("loss_contrastive", "clip"),
          ("mask_center", "mask"), ("lr", "lr"))

  def __init__(self, total_steps: int, batch_size: int, first_step: int = 0):
    self.total, self.batch = total_steps, batch_size
    self.first_step = first_step
    self._tlast, self._slast = None, first_step   # None until the first (compiling) step
    self._paused = 0.0                 # seconds inside paused() since the last rates()
    self.train_sec, self.train_steps = 0.0, 0   # measured step time, compile excluded
    self.first_step_sec = float("nan")
    self._t0 = time.perf_counter()

  @contextlib.contextmanager
  def paused(self):
    """Time inside this block is not step time (evaluation, sampling, checkpointing)."""
    t = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - t

  def rates(self, step: int) -> dict:
    """At a log step (after the device sync): steps/s since the last log step and the ETA."""
    now = time.perf_counter()
    if self._tlast is None:           # the first step of this process: compile + one step
      self.first_step_sec = now - self._t0 - self._paused
      sps = float("nan")
    else:
      dt, ds = now - self._tlast - self._paused, step - self._slast
      sps = ds / dt if dt > 0 and ds > 0 else float("nan")
      if dt > 0 and ds > 0:
        self.train_sec, self.train_steps = self.train_sec + dt, self.train_steps + ds
    self._tlast, self._slast, self._paused = now, step, 0.0
    per_step = self.train_sec / self.train_steps if self.train_steps else float("nan")
    return dict(steps_per_sec=sps, examples_per_sec=sps * self.batch,
                eta_sec=(self.total - step) * per_step)

  def line(self, step: int, row: dict) -> str:
    parts = [f"step {step}/{self.total}"]
    parts += [f"{short} {row[k]:.3g}" for k, short in self.KEYS
              if isinstance(row.get(k), float)]
    sps, eta = row.get("steps_per_sec"), row.get("eta_sec")
    if isinstance(sps, float) and math.isfinite(sps):
      parts.append(f"{sps:.2f} st/s")
    if isinstance(eta, float) and math.isfinite(eta):
      parts.append(f"ETA {_duration(eta)}")
    elif step == self._slast and math.isfinite(self.first_step_sec):
      parts.append(f"first step {_duration(self.first_step_sec)} (compilation)")
    return " | ".join(parts)

  def print(self, step: int, row: dict):
    if jax.process_index() == 0:
      print(self.line(step, row), flush=True)

  @staticmethod
  def eval_line(step: int, row: dict) -> str:
    """'eval step 100: heldout r1_i2t 0.301 r1_t2i 0.34 (2s) | fidelity ...' on one line:
    per evaluator its HEADLINE metrics (else its first 6 numbers), and its time. Counts,
    chance levels and reference rows stay in metrics.jsonl."""
    groups: dict = {}
    for k, v in row.items():
      name, _, key = k.partition("/")
      groups.setdefault(name, {})[key] = v
    parts = []
    for name, vals in groups.items():
      sec = vals.pop("seconds", None)
      nums = {k: v for k, v in vals.items() if isinstance(v, (int, float))
              and not any(x in k for x in ("chance", "num_", "seconds", "real/"))}
      head = {k: v for k, v in nums.items() if k.rsplit("/", 1)[-1] in HEADLINE}
      shown = [f"{k} {v:.3g}" for k, v in list((head or nums).items())[:8]]
      parts.append(f"{name} " + " ".join(shown)
                   + (f" ({_duration(sec)})" if isinstance(sec, (int, float)) else ""))
    return f"eval step {step}: " + " | ".join(parts)

  def print_eval(self, step: int, row: dict):
    if jax.process_index() == 0:
      print(self.eval_line(step, row), flush=True)
