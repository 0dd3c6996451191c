"""The equal-budget study: DREAM against its baselines with the same model, data and steps.

  python -m dream_jax.study --budget=N [--seeds=0,1,2] [--out=DIR] [--variants=...]
      [--config=configs/demo.py] [--evals=study] [-- extra main.py flags]

Trains every (variant, seed) as a normal run, `python -m dream_jax.main
--config=<config>:[<fixed args>,]steps=N,recipe=<variant>,evals=<evals> --config.seed=<seed>
--workdir=DIR/runs/<variant>_seed<seed>`, one after another (seed by seed, sharing one XLA compile cache), and skips runs whose workdir
already has done.json and study.json (so a killed study resumes where it stopped; an
unfinished run resumes from its checkpoints). `--report_only` trains nothing and writes the
table and figure of the runs finished so far. Variants (configs/common.py:apply_recipe):
  dream     the paper's objective: diffusion + weighted contrastive loss, Masking Warmup
  fluid     Fluid-only: no contrastive loss, MAR/Fluid masking (ratio ~ N(1, 0.25) on [0.7, 1])
  clip      CLIP-only: nothing masked, no diffusion loss (so no generation metrics)
  nowarmup  DREAM without Masking Warmup: the mask-ratio centre at its final value from step 0
The config's `evals=study` suite runs at the end of each run (configs/demo.py:
add_study_suite): probes, few-shot, zero-shot, retrieval, proxy FD, mini-GenEval (plain, SAD
and best-of-K with wall times on the DREAM runs).

Writes into DIR: study.json (per run: every final metric, wall time, command; per variant:
mean, sample std and n over seeds of each metric), study.md (one markdown table, mean +- std
over seeds, with the command and the machine) and plots/ (dream_jax.plot's curves of the
first seed of every variant, overlaid).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np

from dream_jax import plot

VARIANTS = ("dream", "fluid", "clip", "nowarmup")
# (label, metric key in metrics.jsonl): the table's columns, in this order.
COLUMNS = (
    ("probe colour", "probe_color/top1"), ("probe shape", "probe_shape/top1"),
    ("probe cell", "probe_cell/top1"), ("probe MNIST", "probe_mnist/top1"),
    ("5-shot colour", "fewshot_color/acc"), ("5-shot MNIST", "fewshot_mnist/acc"),
    ("0-shot colour", "zeroshot_color/top1"), ("0-shot shape", "zeroshot_shape/top1"),
    ("R@1 i2t", "retrieval/i2t_r@1"), ("R@1 t2i", "retrieval/t2i_r@1"),
    ("R@5 i2t", "retrieval/i2t_r@5"), ("R@5 t2i", "retrieval/t2i_r@5"),
    ("held-out diff. loss@0.9", "heldout/diffusion_loss@0.9"),
    ("proxy FD (pixels)", "fid/proxy_fd_pixels"),
    ("GenEval colour", "geneval/plain/color_ok"), ("GenEval cell", "geneval/plain/cell_ok"),
    ("GenEval all", "geneval/plain/all_ok"),
    ("SAD all", "geneval/sad/all_ok"), ("best-of-K all", "geneval/best_of_k/all_ok"),
    ("plain s", "geneval/plain/seconds"), ("SAD s", "geneval/sad/seconds"),
    ("best-of-K s", "geneval/best_of_k/seconds"),
    ("SAD s / best-of-K s", "study/sad_over_best_of_k_time"),
    ("run wall s", "study/wall_seconds"),
)


def run_name(variant: str, seed: int) -> str:
  return f"{variant}_seed{seed}"


def command(config: str, budget: int, variant: str, seed: int, evals: str, workdir: str,
            extra: Sequence[str]) -> list[str]:
  path, _, fixed = config.partition(":")      # e.g. configs/demo.py:prediction=eps
  args = ",".join(a for a in (fixed, f"steps={budget},recipe={variant},evals={evals}") if a)
  return [sys.executable, "-m", "dream_jax.main", f"--config={path}:{args}",
          f"--config.seed={seed}", f"--workdir={workdir}", *extra]


def final_metrics(workdir: str) -> dict:
  """The last logged value of every metric key in W/metrics.jsonl (evaluations included)."""
  out = {}
  for row in plot.read_rows(workdir):
    out.update({k: v for k, v in row.items() if isinstance(v, (int, float))})
  return out


def is_done(workdir: str) -> bool:
  return all(os.path.exists(os.path.join(workdir, f)) for f in ("done.json", "study.json"))


def subprocess_runner(cmd: list[str], env: dict) -> int:
  return subprocess.call(cmd, env=env)


def run_env(out: str) -> dict:
  """The runs' environment: a persistent XLA compile cache shared by the study's runs (the
  seeds of a variant compile the same programs), unless the caller set one."""
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(out), "jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  return env


def run_all(args, runner: Callable[[list[str], dict], int] = subprocess_runner,
            log=print) -> dict:
  """Trains every missing run, seed by seed (so a stopped study has every variant of the
  first seeds); returns {run name: study record}."""
  records = {}
  env = run_env(args.out)
  for seed in args.seeds:
    for variant in args.variants:
      name = run_name(variant, seed)
      wd = os.path.join(args.out, "runs", name)
      cmd = command(args.config, args.budget, variant, seed, args.evals, wd, args.extra)
      if is_done(wd):
        log(f"[study] {name}: done, skipped")
      elif args.report_only:
        log(f"[study] {name}: not finished, left out (--report_only)")
        continue
      else:
        log(f"[study] {name}: {shlex.join(cmd)}")
        t0 = time.time()
        rc = runner(cmd, env)
        if rc != 0 or not os.path.exists(os.path.join(wd, "done.json")):
          raise RuntimeError(f"[study] {name} failed (exit {rc}); rerun the study to resume")
        rec = dict(variant=variant, seed=seed, wall_seconds=round(time.time() - t0, 1),
                   command=shlex.join(cmd))
        with open(os.path.join(wd, "study.json"), "w") as f:
          json.dump(rec, f, indent=1)
      rec = json.load(open(os.path.join(wd, "study.json")))
      metrics = final_metrics(wd)
      metrics["study/wall_seconds"] = rec["wall_seconds"]
      # SAD's cost relative to best-of-K, per run (both decode in the same process, compiled).
      if "geneval/sad/seconds" in metrics and metrics.get("geneval/best_of_k/seconds"):
        metrics["study/sad_over_best_of_k_time"] = (metrics["geneval/sad/seconds"]
                                                    / metrics["geneval/best_of_k/seconds"])
      records[name] = dict(rec, workdir=wd, metrics=metrics)
  return records


def summarise(records: dict, variants: Sequence[str]) -> dict:
  """{variant: {key: {'mean', 'std', 'n'}}} over seeds (std: sample std, 0 for one seed)."""
  out = {}
  for v in variants:
    runs = [r["metrics"] for r in records.values() if r["variant"] == v]
    out[v] = {}
    for _, key in COLUMNS:
      vals = np.array([m[key] for m in runs if key in m], np.float64)
      if len(vals):
        out[v][key] = dict(mean=float(vals.mean()),
                           std=float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                           n=int(len(vals)))
  return out


def markdown(summary: dict, header: str) -> str:
  """One table: a row per variant, a column per metric, 'mean +- std' (n/a when absent)."""
  cols = [(lab, key) for lab, key in COLUMNS
          if any(key in summary[v] for v in summary)]
  lines = [header, "", "| variant | n | " + " | ".join(lab for lab, _ in cols) + " |",
           "|---|---|" + "---|" * len(cols)]
  for v, row in summary.items():
    n = max((s["n"] for s in row.values()), default=0)
    cells = []
    for _, key in cols:
      s = row.get(key)
      fmt = ("{:.0f}" if key == "study/wall_seconds" else
             "{:.2f}" if key.endswith("seconds") else "{:.3f}")
      cells.append("n/a" if s is None else
                   f"{fmt.format(s['mean'])} +- {fmt.format(s['std'])}")
    lines.append(f"| {v} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def machine() -> str:
  load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
  return (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, load at the end "
          f"{load[0]:.1f}")


def write_outputs(args, records: dict, study_seconds: float) -> dict:
  summary = summarise(records, args.variants)
  cmd = "python -m dream_jax.study " + shlex.join(args.argv)
  header = (f"Study: {len(records)} finished runs, {args.budget} steps each, seeds "
            f"{','.join(map(str, args.seeds))}; this invocation {study_seconds / 60:.1f} min "
            f"(sum of the runs' wall times {sum(r['wall_seconds'] for r in records.values()) / 60:.1f} min). "
            f"Command: `{cmd}`. Machine: {machine()}.")
  with open(os.path.join(args.out, "study.md"), "w") as f:
    f.write(markdown(summary, header))
  with open(os.path.join(args.out, "study.json"), "w") as f:
    json.dump(dict(command=cmd, machine=machine(), budget=args.budget, seeds=list(args.seeds),
                   study_seconds=round(study_seconds, 1), summary=summary,
                   runs={k: dict(v) for k, v in records.items()}), f, indent=1)
  first = {}
  for rec in records.values():          # the first finished seed of every variant
    first.setdefault(rec["variant"], rec["workdir"])
  if first:
    plot.plot_workdirs(list(first.values()), os.path.join(args.out, "plots"),
                       labels=list(first))
  return summary


def parse(argv: Sequence[str]):
  p = argparse.ArgumentParser(prog="python -m dream_jax.study", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--budget", type=int, required=True, help="training steps of every run")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--out", default="study_out")
  p.add_argument("--config", default="configs/demo.py",
                 help="config file[:fixed args]; the demo's paper-objective recipe by default")
  p.add_argument("--evals", default="study", help="the config's evals= argument")
  p.add_argument("--report_only", action="store_true",
                 help="train nothing: the table and figure of the runs finished so far")
  p.add_argument("extra", nargs="*", help="after --: flags for every main.py run")
  args = p.parse_args(argv)
  args.argv = list(argv)
  args.seeds = [int(s) for s in args.seeds.split(",") if s]
  args.variants = [v for v in args.variants.split(",") if v]
  bad = [v for v in args.variants if v not in VARIANTS]
  if bad or not args.seeds or args.budget < 1:
    p.error(f"--variants from {VARIANTS} (got {bad}), at least one seed, --budget >= 1")
  return args


def main(argv: Sequence[str] | None = None,
         runner: Callable[[list[str], dict], int] = subprocess_runner) -> dict:
  args = parse(sys.argv[1:] if argv is None else argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  records = run_all(args, runner)
  summary = write_outputs(args, records, time.time() - t0)
  print(open(os.path.join(args.out, "study.md")).read())
  return summary


if __name__ == "__main__":
  main()
