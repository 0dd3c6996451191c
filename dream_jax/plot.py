"""Training-curve figures of one run or several runs overlaid (matplotlib, PNG).

  python -m dream_jax.plot --workdir=W [W2 ...] [--out=DIR] [--labels=a,b]

Reads `W/metrics.jsonl` of every workdir and writes to `W/plots/` (the first workdir's, or
`--out`):
  losses.png      total, diffusion, contrastive (and token-regression) loss by step
  schedule.png    learning rate; Masking Warmup centre with the realised mask ratio (the
                  batch mean per logged step, and its band: min/max over the batch when
                  logged as mask_ratio_min/max, else over a moving window of logged steps)
  activity.png    share of samples that carry the contrastive / diffusion loss
  throughput.png  steps/s and examples/s
  evals.png       every evaluator metric by step (one panel per metric, up to 12)
Several workdirs are drawn in one figure each, labelled by workdir name (e.g. DREAM vs Fluid
vs CLIP). A key that a run did not log is left out of its figure; a figure with nothing to
draw is not written. The trainer calls `plot_workdirs([W])` at the end of a run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

FIGURES = ("losses", "schedule", "activity", "throughput", "evals")
_LOSSES = ("loss", "loss_diffusion", "loss_contrastive", "loss_token_regression")
_TIMING = ("steps_per_sec", "examples_per_sec", "eta_sec", "elapsed_sec")


def read_rows(workdir: str) -> list[dict]:
  """W/metrics.jsonl -> rows (string values such as 'nan' become floats; bad lines skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file (is --workdir a training workdir?)")
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue   # a line cut by a kill mid-write
  return rows


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of `key` over the rows that have it; a resumed run's repeated steps
  keep their last value."""
  pts = {}
  for r in rows:
    if key in r and "step" in r:
      try:
        pts[int(r["step"])] = float(r[key])
      except (TypeError, ValueError):
        continue
  steps = np.array(sorted(pts), np.int64)
  return steps, np.array([pts[s] for s in steps], np.float64)


def _band(rows, steps, vals, window: int = 5):
  lo_s, lo = series(rows, "mask_ratio_min")
  hi_s, hi = series(rows, "mask_ratio_max")
  if len(lo) and len(hi) and len(lo) == len(hi):
    return lo_s, lo, hi, "batch min-max"
  pad = window // 2
  v = np.pad(vals, pad, mode="edge")
  win = np.lib.stride_tricks.sliding_window_view(v, window)
  return steps, win.min(-1), win.max(-1), f"min-max over {window} logged steps"


def _plt():
  import matplotlib
  matplotlib.use("Agg")   # headless: files only
  import matplotlib.pyplot as plt
  return plt


def _save(fig, out_dir: str, name: str) -> str:
  path = os.path.join(out_dir, f"{name}.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  _plt().close(fig)
  return path


def _panels(plt, n: int, width: float = 4.2, height: float = 3.0):
  cols = min(n, 3)
  rows = int(math.ceil(n / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:n])


def _lines(ax, runs, key, log=False, style="-"):
  drawn = False
  for i, (label, rows) in enumerate(runs):
    s, v = series(rows, key)
    if len(s):
      ax.plot(s, v, style, color=f"C{i}", label=label, lw=1.4)
      drawn = True
  if drawn:
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("step")
    if log and all(np.all(series(r, key)[1] > 0) for _, r in runs if len(series(r, key)[0])):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(runs) > 1:
      ax.legend(fontsize=8)
  return drawn


def _keyed(out_dir, name, runs, keys, log=False) -> Optional[str]:
  keys = [k for k in keys if any(len(series(r, k)[0]) for _, r in runs)]
  if not keys:
    return None
  plt = _plt()
  fig, axes = _panels(plt, len(keys))
  for ax, k in zip(axes, keys):
    _lines(ax, runs, k, log=log)
  return _save(fig, out_dir, name)


def _schedule(out_dir, runs) -> Optional[str]:
  has_lr = any(len(series(r, "lr")[0]) for _, r in runs)
  has_mask = any(len(series(r, "mask_center")[0]) or len(series(r, "mask_ratio")[0])
                 for _, r in runs)
  if not (has_lr or has_mask):
    return None
  plt = _plt()
  fig, axes = _panels(plt, int(has_lr) + int(has_mask), width=5.0)
  if has_lr:
    _lines(axes[0], runs, "lr")
  if has_mask:
    ax = axes[-1]
    for i, (label, rows) in enumerate(runs):
      s, c = series(rows, "mask_center")
      if len(s):
        ax.plot(s, c, color=f"C{i}", lw=1.6, label=f"{label} centre")
      s, v = series(rows, "mask_ratio")
      if len(s):
        bs, lo, hi, how = _band(rows, s, v)
        ax.fill_between(bs, lo, hi, color=f"C{i}", alpha=0.2, lw=0,
                        label=f"{label} realised ({how})")
        ax.plot(s, v, ".", color=f"C{i}", ms=3)
    ax.set_title("mask ratio: Masking Warmup centre and realised", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(fig, out_dir, "schedule")


def eval_keys(runs) -> list[str]:
  """Evaluator metrics ('name/...'), without times, counts, chance and reference rows."""
  keys = []
  for _, rows in runs:
    for r in rows:
      for k in r:
        if ("/" in k and k not in keys and not k.startswith("data_skipped/")
            and not any(x in k for x in ("seconds", "num_", "chance", "real/"))):
          keys.append(k)
  return keys[:12]


def plot_runs(runs: Sequence[tuple[str, list[dict]]], out_dir: str) -> list[str]:
  """[(label, rows)] -> the PNG paths written to out_dir (figures with data only)."""
  os.makedirs(out_dir, exist_ok=True)
  out = [_keyed(out_dir, "losses", runs, _LOSSES, log=True),
         _schedule(out_dir, runs),
         _keyed(out_dir, "activity", runs, ("share_contrastive", "share_diffusion")),
         _keyed(out_dir, "throughput", runs, ("steps_per_sec", "examples_per_sec")),
         _keyed(out_dir, "evals", runs, eval_keys(runs))]
  return [p for p in out if p]


def plot_workdirs(workdirs: Sequence[str], out_dir: Optional[str] = None,
                  labels: Optional[Sequence[str]] = None) -> list[str]:
  """Figures of the runs in `workdirs` (overlaid) -> `out_dir` (default W[0]/plots)."""
  workdirs = list(workdirs)
  if not workdirs:
    raise ValueError("give at least one --workdir")
  labels = list(labels) if labels else [os.path.basename(os.path.abspath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    raise ValueError(f"--labels: {len(labels)} labels for {len(workdirs)} workdirs")
  runs = [(lab, read_rows(w)) for lab, w in zip(labels, workdirs)]
  return plot_runs(runs, out_dir or os.path.join(workdirs[0], "plots"))


def main(argv: Optional[Sequence[str]] = None) -> list[str]:
  p = argparse.ArgumentParser(prog="python -m dream_jax.plot", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", nargs="+", required=True, action="extend",
                 help="one or more training workdirs (repeatable; overlaid)")
  p.add_argument("--out", default=None, help="output folder (default: FIRST_WORKDIR/plots)")
  p.add_argument("--labels", default=None, help="comma-separated legend labels")
  args = p.parse_args(argv)
  try:
    paths = plot_workdirs(args.workdir, args.out,
                          args.labels.split(",") if args.labels else None)
  except (ValueError, OSError) as e:
    raise SystemExit(f"error: {e}")
  for path in paths:
    print(path)
  return paths


if __name__ == "__main__":
  main(sys.argv[1:])
