"""Test-side wrapper of `python main.py ...` that PAUSES at a named moment so that the test
can SIGKILL it there (the product has no kill hook; see tests/test_faults.py).

    DREAM_FAULT=<moment>[@<step>] python tests/fault_runner.py --config=... --workdir=...

At the moment the runner prints `FAULT-POINT <moment> <step>` to stderr and sleeps; the
test kills it on that line. Moments (step: the training step it applies to):
  after_step@S        the progress line of step S was printed (training in progress)
  in_save@S           checkpoint S is being written: orbax's background finalize is held, so
                      the step directory is still a *.orbax-checkpoint-tmp folder
  after_save@S        checkpoint S is committed (waited for), before its evaluations
  in_eval@S           inside an evaluator's run at step S (0: the step-0 evaluation)
  in_samples@S        while the sample grid of step S is being made
Without DREAM_FAULT it is main.py unchanged. `run_main` (imported by the tests) runs it in
a subprocess with one CPU device and the shared compile cache, and kills it at the moment.
"""
import collections
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)


# The tiny config of the trainer tests, as command-line overrides of dream_b16:runlocal.
TINY_FLAGS = ("--config=configs/dream_b16.py:runlocal", "--config.tokenizer.kind=identity",
              "--config.tokenizer.patch_size=4",
              "--config.data.image_size=16", "--config.text.cond_encoder=small",
              "--config.text.small_width=32", "--config.text.small_layers=1",
              "--config.text.small_heads=2", "--config.total_steps=6", "--config.ckpt.every=2",
              "--config.ckpt.keep=2")
Result = collections.namedtuple("Result", "returncode output killed_at")


def run_main(workdir, *flags, fault: str | None = None, base=TINY_FLAGS,
             timeout: float = 600) -> Result:
  """`main.py --workdir=W *base *flags` in a subprocess; with `fault`, SIGKILLed at that
  moment (Result.killed_at = the FAULT-POINT line; returncode -9)."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)          # one CPU device in the child
  env.pop("DREAM_FAULT", None)
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", PYTHONUNBUFFERED="1")
  if fault:
    env["DREAM_FAULT"] = fault
  cmd = [sys.executable, os.path.join(ROOT, "tests", "fault_runner.py"), f"--workdir={workdir}",
         *base, *flags]
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  lines, killed_at, t0 = [], None, time.monotonic()
  for line in p.stdout:
    lines.append(line)
    if fault and line.startswith("FAULT-POINT"):
      killed_at = line.strip()
      p.send_signal(signal.SIGKILL)
      break
    if time.monotonic() - t0 > timeout:
      p.kill()
      break
  rest = p.communicate(timeout=60)[0] or ""
  return Result(p.returncode, "".join(lines) + rest, killed_at)


# --------------------------------------------------------------------- fault campaign
FAULT_BASE = ("--config=tests/fault_config.py:steps=6",)
PHASES = ("after_step", "in_save", "after_save", "in_eval", "in_samples")   # order in a step
# The default campaign: 6 kills, one at each kind of moment of a 6-step run (checkpoints at
# 2, 4, 6; evaluations at 0, 2, 4, 6; samples at 6).
DEFAULT_MOMENTS = ("in_eval@0", "after_step@3", "in_save@4", "in_eval@4", "after_save@6",
                   "in_samples@6")
TIMING = ("steps_per_sec", "examples_per_sec", "eta_sec", "elapsed_sec")


def all_moments(steps: int, every: int = 2) -> list[str]:
  """Every moment of a `steps`-step run of tests/fault_config.py, in run order."""
  out = []
  for s in range(steps + 1):
    if s:
      out.append(f"after_step@{s}")
    if s and (s % every == 0 or s == steps):
      out += [f"in_save@{s}", f"after_save@{s}"]
    if s % every == 0 or s == steps:
      out.append(f"in_eval@{s}")
  return out + [f"in_samples@{steps}"]


def comparable_rows(workdir) -> list[dict]:
  """metrics.jsonl without wall-clock values, in a canonical order (step, train row first)."""
  from dream_jax.train.metrics import read_metrics
  rows = [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("/seconds")}
          for r in read_metrics(workdir)]
  return sorted(rows, key=lambda r: (r["step"], "loss" not in r))


def restore_all(workdir, step):
  """Every array of checkpoint `step` (state: params, opt state, rng; ema: EMA + BN)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from dream_jax.train.checkpoint import Checkpointer
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  out = ck.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), ema=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, dict(out["state"], ema=out["ema"]))


def campaign(root: str, moments=DEFAULT_MOMENTS, *, steps: int = 6, log=print) -> dict:
  """An uninterrupted run and a run SIGKILLed at each of `moments` in turn (each rerun
  resuming the same workdir, the last one finishing), then the equality check:
  every array of the final checkpoint bitwise equal (params, optimiser state, rng, EMA, BN),
  the metrics rows equal (wall-clock values aside, no duplicates), the final sample grid
  byte-identical, done.json in both. Returns a summary; raises AssertionError on a failure."""
  import jax
  import numpy as np
  base = (f"--config=tests/fault_config.py:steps={steps}",)
  ref, run = os.path.join(root, "reference"), os.path.join(root, "killed")
  t0 = time.monotonic()
  r = run_main(ref, base=base)
  assert r.returncode == 0, r.output[-3000:]
  log(f"reference run: {time.monotonic() - t0:.0f}s")
  kills = []
  for m in moments:
    t = time.monotonic()
    r = run_main(run, fault=m, base=base)
    assert r.returncode == -signal.SIGKILL and r.killed_at, (m, r.returncode, r.output[-3000:])
    ck = os.path.join(run, "checkpoints")
    steps_now = sorted(int(d) for d in os.listdir(ck) if d.isdigit()) if os.path.isdir(ck) else []
    kills.append(dict(moment=m, checkpoints=steps_now, seconds=round(time.monotonic() - t)))
    log(f"killed at {r.killed_at}: committed checkpoints {steps_now}")
  r = run_main(run, base=base)
  assert r.returncode == 0, r.output[-3000:]
  a, b = restore_all(ref, steps), restore_all(run, steps)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  rows_a, rows_b = comparable_rows(ref), comparable_rows(run)
  assert rows_a == rows_b, (rows_a, rows_b)
  assert len({(x["step"], "loss" in x) for x in rows_b}) == len(rows_b)   # no duplicates
  png = os.path.join("samples", f"step_{steps:06d}.png")
  assert open(os.path.join(ref, png), "rb").read() == open(os.path.join(run, png), "rb").read()
  for w in (ref, run):
    assert json.load(open(os.path.join(w, "done.json"))) == {"step": steps}
  summary = dict(kills=kills, rows=len(rows_b), arrays=len(jax.tree.leaves(b)),
                 seconds=round(time.monotonic() - t0))
  log(json.dumps(summary))
  return summary


def _pause(moment: str, step: int) -> None:
  print(f"FAULT-POINT {moment} {step}", file=sys.stderr, flush=True)
  time.sleep(600)
  raise SystemExit(f"fault runner: nobody killed the run at {moment} {step}")


def _install(spec: str) -> None:
  moment, _, at = spec.partition("@")
  at = int(at or 0)
  from dream_jax.train import checkpoint as ckpt_lib
  from dream_jax.train import metrics as metrics_lib

  if moment == "after_step":
    orig_print = metrics_lib.Progress.print

    def print_(self, step, row):
      orig_print(self, step, row)
      if step == at:
        _pause(moment, step)
    metrics_lib.Progress.print = print_
  elif moment == "in_save":
    import orbax.checkpoint as ocp
    orig_finalize = ocp.CheckpointManager._finalize

    def finalize(self, step, steps_to_remove):
      if step == at:
        _pause(moment, step)
      return orig_finalize(self, step, steps_to_remove)
    ocp.CheckpointManager._finalize = finalize
  elif moment == "after_save":
    orig_save = ckpt_lib.Checkpointer.save

    def save(self, step, *a, **kw):
      orig_save(self, step, *a, **kw)
      if step == at:
        self.wait()
        _pause(moment, step)
    ckpt_lib.Checkpointer.save = save
  elif moment == "in_eval":
    from dream_jax.evaluators import heldout
    orig_run = heldout.Evaluator.run

    def run(self, variables, *, step=None, **kw):
      if step == at:
        _pause(moment, step)
      return orig_run(self, variables, step=step, **kw)
    heldout.Evaluator.run = run
  elif moment == "in_samples":
    from dream_jax.utils import images   # the trainer's sample grids are drawn here
    orig_grid = images.captioned_grid

    def captioned_grid(*a, **kw):
      _pause(moment, at)
      return orig_grid(*a, **kw)
    images.captioned_grid = captioned_grid
  else:
    raise SystemExit(f"DREAM_FAULT={spec!r}: unknown moment")


if __name__ == "__main__":
  if os.environ.get("DREAM_FAULT"):
    _install(os.environ["DREAM_FAULT"])
  os.chdir(ROOT)
  import runpy
  sys.argv = ["main.py", *sys.argv[1:]]
  runpy.run_path(os.path.join(ROOT, "main.py"), run_name="__main__")
