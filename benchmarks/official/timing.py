"""Alternating side-by-side timing and its summary (pure Python; no torch, no jax).

A measurement is R rounds; in each round every side runs N repetitions, and the order of
the sides flips from one round to the next (A B, B A, A B, ...), so that a slow drift of
the machine's load falls on both sides alike. A ratio is printed only when both sides ran
in the same run; nothing here stores a reference time.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys

NO_RATIO = ("no ratio to the official code measured in this run "
            "(pass --official=PATH to time it side by side)")


def schedule(rounds: int, sides: tuple[str, ...]) -> list[tuple[int, str]]:
  """[(round, side), ...]: every side once per round, the order reversed on odd rounds."""
  if rounds < 1 or not sides:
    raise ValueError(f"need rounds >= 1 and at least one side, got {rounds}, {sides}")
  out = []
  for r in range(rounds):
    for side in (sides if r % 2 == 0 else tuple(reversed(sides))):
      out.append((r, side))
  return out


def alternate(runners: dict, rounds: int, reps: int) -> dict[str, list[float]]:
  """Runs `runners[side](reps) -> [seconds, ...]` in the alternating schedule; returns
  every side's times, in order, concatenated over the rounds."""
  times = {side: [] for side in runners}
  for _, side in schedule(rounds, tuple(runners)):
    got = list(runners[side](reps))
    if len(got) != reps:
      raise RuntimeError(f"{side} returned {len(got)} times for {reps} repetitions")
    times[side].extend(got)
  return times


def summarize(times) -> dict:
  """Median, min, max and count of a list of seconds."""
  if not times:
    raise ValueError("no times to summarize")
  return dict(median=statistics.median(times), min=min(times), max=max(times), n=len(times))


def fmt(s: dict) -> str:
  return f"{s['median']:.3f} s [{s['min']:.3f}-{s['max']:.3f}] (n={s['n']})"


def ratio_line(label: str, ours: dict, official: dict | None) -> str:
  """One result line: ours, the official time and ours / official (< 1 means faster)."""
  if official is None:
    return f"{label}: ours {fmt(ours)}; {NO_RATIO}"
  r = ours["median"] / official["median"]
  word = "faster" if r < 1 else "slower"
  return (f"{label}: ours {fmt(ours)} | official {fmt(official)} | ours/official "
          f"{r:.3f}x ({word})")


class Rusage:
  """This process's user / system CPU seconds and minor page faults, summed over the
  `with` blocks it is used in (the kernel share shows allocation churn)."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.user = self.sys = 0.0
    self.minflt = 0

  def as_dict(self) -> dict:
    return dict(user_s=self.user, sys_s=self.sys, minflt=self.minflt)

  def __enter__(self):
    self._r0 = resource.getrusage(resource.RUSAGE_SELF)
    return self

  def __exit__(self, *exc):
    r = resource.getrusage(resource.RUSAGE_SELF)
    self.user += r.ru_utime - self._r0.ru_utime
    self.sys += r.ru_stime - self._r0.ru_stime
    self.minflt += r.ru_minflt - self._r0.ru_minflt

  def line(self, per: int, what: str = "step") -> str:
    per = max(per, 1)
    share = self.sys / self.user if self.user else float("nan")
    return (f"per {what}: user {self.user / per:.3f} s, system {self.sys / per:.3f} s "
            f"({share:.1%} of user), {self.minflt / per:,.0f} minor faults")


def cpu_line(ours_cpu, official_cpu) -> str:
  """Median CPU seconds per repetition of both sides (user + system of each process). On a
  loaded machine this is the steadier comparison: wall time then also measures how each
  side's threads cope with preemption (torch's 2-thread pool suffers far more than XLA's)."""
  o = statistics.median(ours_cpu)
  if not official_cpu:
    return f"CPU per repetition: ours {o:.3f} s"
  f = statistics.median(official_cpu)
  return f"CPU per repetition: ours {o:.3f} s, official {f:.3f} s, ours/official {o / f:.3f}x"


def load_line() -> str:
  """The machine's load when a result is printed (the CPU machine is shared)."""
  one, five, fifteen = os.getloadavg()
  return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


class OfficialProcess:
  """The official model in a subprocess (benchmarks/official/worker.py), driven line by line.

  `OfficialProcess(official, shapes, tasks)`; `.ready` holds the worker's build/warm-up
  report; `.runner(task)` is a `reps -> [seconds]` callable for `alternate`; `.close()`.
  `python` and `env` default to this interpreter and environment (plus `extra_path` on
  PYTHONPATH, e.g. a folder holding timm).
  """

  def __init__(self, official: str, shapes: str, tasks: tuple[str, ...], threads: int = 2,
               extra_path: str = "", python: str = sys.executable, timeout_s: float = 3600):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, extra_path, env.get("PYTHONPATH", "")) if p)
    env["CUDA_VISIBLE_DEVICES"] = ""
    if env.pop("DREAM_MALLOC_TUNED", ""):    # the official code runs as shipped: glibc malloc
      for k in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = str(threads)
    self.timeout_s = timeout_s
    self.cpu = {t: [] for t in tasks}     # the worker's CPU seconds per repetition
    self.proc = subprocess.Popen(
        [python, os.path.join(here, "worker.py"), f"--official={official}",
         f"--tasks={','.join(tasks)}", f"--shapes={shapes}", f"--threads={threads}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    self.ready = self._read()
    if not self.ready.get("ready"):
      raise RuntimeError(f"official worker did not start: {self.ready}")

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      rc = self.proc.wait(timeout=60)
      raise RuntimeError(f"official worker exited (rc {rc}); see its stderr above")
    return json.loads(line)

  def run(self, task: str, reps: int) -> dict:
    self.proc.stdin.write(json.dumps(dict(run=reps, task=task)) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def runner(self, task: str):
    def run(reps):
      out = self.run(task, reps)
      self.cpu[task].extend(out["cpu"])
      return out["times"]
    return run

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps(dict(quit=True)) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
