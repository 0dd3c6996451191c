"""The end-of-run summary: headline metrics and where everything is (process 0 prints it).

  done: 500 steps in 8m25s (training 4m40s at 1.78 st/s; first step 21s incl. compilation)
    loss 0.44 | diff 0.033 | clip 0.42               (last logged training step)
    heldout r1_i2t 0.355 r1_t2i 0.375 (2s)           (last row of each evaluator)
    fidelity plain/color_ok 0.406 ... (1m10s)
  checkpoints  W/checkpoints/500   (rerun the same command to resume or extend)
  samples      W/samples/step_000500.png (+3 more)
  metrics      W/metrics.jsonl
  plots        W/plots/losses.png (+4 more)   (python -m dream_jax.plot --workdir=W)
  sample more  python -m dream_jax.sample --workdir=W --prompt="..." --out=W/mine.png

Everything is read back from the workdir (metrics.jsonl, checkpoints/, samples/, plots/),
so the summary of a resumed run covers the whole run.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

from dream_jax.train import metrics as metrics_lib


def headline(rows: list[dict]) -> tuple[dict, dict]:
  """(last training row, {evaluator name: its last row of 'name/...' keys}) of metrics."""
  train, evals = {}, {}
  for r in rows:
    if "loss" in r:
      train = r
    for k, v in r.items():
      if "/" in k and not k.startswith("data_skipped/"):
        name = k.split("/", 1)[0]
        if r.get("step") != evals.get(name, {}).get("_step"):
          evals[name] = {"_step": r.get("step")}
        evals[name][k] = v
  return train, evals


def _files(pattern: str) -> str:
  found = sorted(glob.glob(pattern), key=os.path.getmtime)
  if not found:
    return "(none)"
  more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
  return found[-1] + more


def lines(workdir: str, progress: Optional[metrics_lib.Progress] = None,
          wall_sec: Optional[float] = None, ckpt_dir: Optional[str] = None) -> list[str]:
  """The summary's lines for `workdir` (see the module docstring)."""
  rows = metrics_lib.read_metrics(workdir)
  train, evals = headline(rows)
  d = metrics_lib._duration
  steps = train.get("step", 0)
  head = f"done: {steps} steps"
  if progress is not None and progress.first_step >= steps:   # resumed a finished run
    head = f"already complete: {steps} steps (nothing left to train)"
  elif wall_sec is not None:
    head += f" in {d(wall_sec)}"
  if progress is not None and progress.train_steps:
    sps = progress.train_steps / progress.train_sec
    head += f" (training {d(progress.train_sec)} at {sps:.2f} st/s"
    head += (f"; first step {d(progress.first_step_sec)} incl. compilation)"
             if progress.first_step_sec == progress.first_step_sec else ")")
  out = [head]
  if train:
    out.append("  " + " | ".join(f"{short} {train[k]:.3g}" for k, short in
                                 metrics_lib.Progress.KEYS[:3]
                                 if isinstance(train.get(k), (int, float))))
  for name, row in evals.items():
    step = row.pop("_step")
    out.append("  " + metrics_lib.Progress.eval_line(step, row).replace(
        f"eval step {step}: ", "") + f"  [step {step}]")
  ck = ckpt_dir or os.path.join(workdir, "checkpoints")
  steps_saved = sorted(int(s) for s in os.listdir(ck) if s.isdigit()) if os.path.isdir(ck) \
      else []
  out.append(f"  checkpoints  {os.path.join(ck, str(steps_saved[-1])) if steps_saved else '(none)'}"
             "   (rerun the same command to resume; --config.total_steps=N to extend)")
  out.append(f"  samples      {_files(os.path.join(workdir, 'samples', '*.png'))}")
  out.append(f"  metrics      {os.path.join(workdir, 'metrics.jsonl')}")
  out.append(f"  plots        {_files(os.path.join(workdir, 'plots', '*.png'))}"
             f"   (python -m dream_jax.plot --workdir={workdir})")
  out.append(f"  sample more  python -m dream_jax.sample --workdir={workdir} "
             "--prompt=\"...\" --out=mine.png")
  return out


def finish(workdir: str, progress: Optional[metrics_lib.Progress] = None,
           wall_sec: Optional[float] = None, ckpt_dir: Optional[str] = None) -> list[str]:
  """End of training (process 0): writes W/plots/ (when matplotlib imports) and prints the
  summary. Plotting problems never fail a finished run; they are reported in one line."""
  try:
    from dream_jax import plot
    plot.plot_workdirs([workdir])
  except Exception as e:   # noqa: BLE001  plots are a convenience, the run is done
    print(f"warning: no plots ({type(e).__name__}: {e})", flush=True)
  out = lines(workdir, progress, wall_sec, ckpt_dir)
  print("\n".join(out), flush=True)
  return out
