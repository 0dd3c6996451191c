"""Command line sampler: text -> images from a trained run's latest (or given) checkpoint.

  python -m dream_jax.sample --workdir=W --prompt="a red circle in the top left" \
      [--prompt=... | --prompts_file=F] [--mode=plain|sad|best_of_k] [--num_candidates=K] \
      [--sad_step=T | --sad_share=0.125] [--cfg=3.0] [--temperature=1.0] [--seed=S] \
      [--show_candidates] --out=OUT.png

Reads W/config.json and the EMA parameters + BatchNorm statistics of the checkpoint
(`dream_jax.train.inference.load_for_inference`), decodes with the jitted sampler
(dream_jax/sampling) and writes OUT.png (a grid) plus OUT_000.png, OUT_001.png, ... (one per
prompt). Mode: 'sad' when --num_candidates, --sad_step or --sad_share is given, else
'plain', unless --mode says otherwise. With --show_candidates (SAD) OUT_candidates.png shows
the K partial candidates of every prompt at step T with their scores, the winner framed.
Defaults come from the run's config.sampling.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m dream_jax.sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
  p.add_argument("--prompts_file", default=None, help="one prompt per line")
  p.add_argument("--mode", choices=("plain", "sad", "best_of_k"), default=None)
  p.add_argument("--num_candidates", type=int, default=None, help="K (SAD / best-of-K)")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--sad_step", type=int, default=None, help="T: steps decoded before selection")
  g.add_argument("--sad_share", type=float, default=None,
                 help="select at the first step whose decoded share >= this (e.g. 0.125)")
  p.add_argument("--critic", choices=("final", "mean"), default="final")
  p.add_argument("--cfg", type=float, default=None)
  p.add_argument("--cfg_schedule", choices=("linear", "constant"), default=None)
  p.add_argument("--temperature", type=float, default=None)
  p.add_argument("--num_steps", type=int, default=None, help="MAR decoding steps")
  p.add_argument("--num_diffusion_steps", default=None, help="respaced head steps, e.g. 100")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--show_candidates", action="store_true")
  p.add_argument("--out", required=True, help="output PNG (grid); singles are written beside it")
  return p.parse_args(argv)


def read_prompts(args) -> list[str]:
  prompts = [x for x in args.prompt]
  if args.prompts_file:
    if not os.path.exists(args.prompts_file):
      raise SystemExit(f"--prompts_file={args.prompts_file}: no such file")
    with open(args.prompts_file) as f:
      prompts += [line.strip() for line in f if line.strip()]
  prompts = [x for x in prompts if x.strip()]
  if not prompts:
    raise SystemExit("no prompts: give --prompt=... (repeatable) or a non-empty --prompts_file")
  return prompts


def resolve_mode(args) -> str:
  if args.mode:
    return args.mode
  if args.num_candidates is not None or args.sad_step is not None or args.sad_share is not None:
    return "sad"
  return "plain"


def check_workdir(workdir: str) -> None:
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise SystemExit(f"{workdir}/config.json not found: is --workdir a training workdir?")
  ck = os.path.join(workdir, "checkpoints")
  steps = [d for d in os.listdir(ck) if d.isdigit()] if os.path.isdir(ck) else []
  if not steps:
    raise SystemExit(f"no checkpoint in {ck}: train first (python main.py --config=... "
                     f"--workdir={workdir}) or point --workdir at a run with checkpoints")


def default_loader(workdir: str, step: Optional[int]):
  try:
    from dream_jax.train.inference import load_for_inference
  except ImportError as e:   # the trainer's loader is a separate module
    raise SystemExit(f"dream_jax.train.inference.load_for_inference is unavailable ({e})")
  return load_for_inference(workdir, step=step)


def main(argv: Optional[Sequence[str]] = None, *, loader: Optional[Callable] = None) -> dict:
  """Runs the CLI; returns a summary dict (also printed as JSON). `loader(workdir, step) ->
  (config, model, variables_ema, frozen)` defaults to the trainer's `load_for_inference`."""
  args = parse_args(argv)
  prompts = read_prompts(args)
  mode = resolve_mode(args)
  if args.num_candidates is not None and args.num_candidates < 1:
    raise SystemExit(f"--num_candidates={args.num_candidates}: K must be >= 1")
  if args.show_candidates and mode != "sad":
    raise SystemExit("--show_candidates needs SAD (--mode=sad or --num_candidates/--sad_step)")
  check_workdir(args.workdir)

  import jax
  from dream_jax import sampling
  from dream_jax.sampling import images as im
  from dream_jax.sampling import schedule as sl

  t0 = time.perf_counter()
  config, model, variables, frozen = (loader or default_loader)(args.workdir, args.step)
  from dream_jax.train.components import Components
  comp = Components(config)
  sampler = sampling.Sampler(model, config, comp.image_tokens, comp.conditioning, comp.tokenize,
                             frozen=frozen)
  t_load = time.perf_counter() - t0

  ov = {k: getattr(args, k) for k in ("cfg", "temperature", "num_steps", "num_diffusion_steps",
                                      "cfg_schedule") if getattr(args, k) is not None}
  if mode in ("sad", "best_of_k") and args.num_candidates is not None:
    ov["num_candidates"] = args.num_candidates
  if mode == "sad":
    n_steps = int(ov.get("num_steps", config.sampling.num_steps))
    sch = sl.reveal_schedule(model.spec.seq_len, n_steps)
    try:
      if args.sad_step is not None:
        sl.check_sad_step(sch, args.sad_step)
        ov["sad_step"] = args.sad_step
      elif args.sad_share is not None:
        ov["sad_share"] = args.sad_share
        sl.sad_step_from_share(sch, args.sad_share)
    except ValueError as e:
      raise SystemExit(f"--sad_step/--sad_share: {e}")
    ov.update(critic=args.critic, return_candidates=args.show_candidates)
  rng = jax.random.key(args.seed)
  fn = {"plain": sampler.sample, "sad": sampler.sample_sad, "best_of_k": sampler.best_of_k}[mode]
  t1 = time.perf_counter()
  try:
    out = fn(variables, None, prompts, rng, **ov)
  except ValueError as e:
    raise SystemExit(str(e))
  t_sample = time.perf_counter() - t1

  paths = im.save_grid_and_singles(out["images"], args.out)
  summary = dict(mode=mode, prompts=prompts, out=paths[0], singles=paths[1:],
                 seconds_load=round(t_load, 2), seconds_sample=round(t_sample, 2))
  if "scores" in out:
    summary.update(scores=np.round(out["scores"], 4).tolist(),
                   winner=np.asarray(out["winner"]).tolist())
  if mode == "sad":
    summary.update(sad_step=out["sad_step"], revealed_share=out["revealed_share"])
    if args.show_candidates:
      stem, ext = os.path.splitext(args.out)
      fig = im.candidates_figure(out["candidates"], out["scores"], out["winner"], prompts,
                                 step=out["sad_step"])
      summary["candidates_figure"] = im.save_png(fig, f"{stem}_candidates{ext or '.png'}")
  print(json.dumps(summary, indent=1))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
