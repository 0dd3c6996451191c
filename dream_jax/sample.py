"""Command line sampler: text -> images from a trained run's latest (or given) checkpoint.

  python -m dream_jax.sample --workdir=W --prompt="a red circle in the top left" \
      [--prompt=... | --prompts_file=F] [--mode=plain|sad|best_of_k] [--num_candidates=K] \
      [--sad_step=T | --sad_share=0.125] [--cfg=3.0] [--temperature=1.0] [--seed=S] \
      [--show_candidates] [--strict] --out=OUT.png
  python -m dream_jax.sample --workdir=W --list_words     # the words the run's tokenizer knows

Reads W/config.json and the EMA parameters + BatchNorm statistics of the checkpoint
(`dream_jax.train.inference.load_for_inference`), decodes with the jitted sampler
(dream_jax/sampling) and writes OUT.png (a grid) plus OUT_000.png, OUT_001.png, ... (one per
prompt; the grid carries each prompt as its caption). Mode: 'sad' when --num_candidates, --sad_step or --sad_share is given, else
'plain', unless --mode says otherwise. With --show_candidates (SAD) OUT_candidates.png shows
the K partial candidates of every prompt at step T with their scores (undecoded tokens as a
grey checkerboard), the winner framed. `--list_words` prints the words a word-level
tokenizer knows.
Defaults come from the run's config.sampling.

Inputs are checked before anything is sampled, each error naming its flag:
  * --cfg, --temperature, --num_steps, --num_diffusion_steps, --cfg_schedule, --sad_step,
    --sad_share, --num_candidates: applied to the run's config.sampling and checked by the
    one config validation (configs/validation.py): cfg >= 0 (1 = no guidance), temperature
    >= 0 (0 = noise-free head sampling), num_steps >= 1 (>= 2 for SAD), sad_step in
    [1, num_steps - 1], num_diffusion_steps a respacing spec ('50', 'ddim25', ...),
    1 <= num_candidates <= MAX_CANDIDATES;
  * prompts: an empty --prompt is an error; words outside a word tokenizer's vocabulary are
    encoded as <unk> with a warning naming them (an error with --strict); characters the
    tokenizer drops (non-ASCII for the word tokenizer) and prompts longer than the text
    context (the end is cut, as CLIP does) are warned about;
  * --out must be a file path in an existing directory (not a directory).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

MAX_CANDIDATES = 64   # K decodings per prompt run in one batch; more is a typo, not a plan
# CLI flag -> key of config.sampling checked by configs/validation.py.
SAMPLING_FLAGS = {"cfg": "cfg", "temperature": "temperature", "num_steps": "num_steps",
                  "num_diffusion_steps": "num_diffusion_steps", "cfg_schedule": "cfg_schedule",
                  "sad_step": "sad_step", "sad_share": "sad_share",
                  "num_candidates": "sad_candidates"}


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
  p.add_argument("--strict", action="store_true",
                 help="words outside the vocabulary are an error (default: a warning)")
  p.add_argument("--list_words", action="store_true",
                 help="print the words the run's caption tokenizer knows, then exit")
  p.add_argument("--out", default=None,
                 help="output PNG (grid); singles are written beside it")
  return p.parse_args(argv)


def read_prompts(args) -> list[str]:
  """--prompt values (an empty one is an error) then the non-blank lines of --prompts_file."""
  for i, x in enumerate(args.prompt):
    if not x.strip():
      raise SystemExit(f"--prompt={x!r} (prompt {i + 1}): empty prompt; give a caption "
                       "(this CLI does not sample unconditionally)")
  prompts = [x.strip() for x in args.prompt]
  if args.prompts_file:
    if not os.path.isfile(args.prompts_file):
      raise SystemExit(f"--prompts_file={args.prompts_file}: no such file")
    try:
      with open(args.prompts_file, encoding="utf-8") as f:
        prompts += [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
      raise SystemExit(f"--prompts_file={args.prompts_file}: not UTF-8 text ({e})")
  if not prompts:
    raise SystemExit("no prompts: give --prompt=... (repeatable) or a non-empty --prompts_file")
  return prompts


def check_out(out: str) -> None:
  """--out is a file to create in an existing directory."""
  if os.path.isdir(out):
    raise SystemExit(f"--out={out}: is a directory; give a file path such as {out}/grid.png")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise SystemExit(f"--out={out}: directory {parent} does not exist")
  if not os.access(parent, os.W_OK):
    raise SystemExit(f"--out={out}: directory {parent} is not writable")


def check_sampling_flags(args, config, mode: str) -> None:
  """The flags that override config.sampling, checked by the one config validation."""
  from configs.validation import ConfigError, validate
  c = config.copy_and_resolve_references()
  c.unlock()
  given = {f: getattr(args, f) for f in SAMPLING_FLAGS if getattr(args, f) is not None}
  with c.ignore_type():
    for flag, value in given.items():
      c.sampling[SAMPLING_FLAGS[flag]] = value
    if args.sad_step is not None:
      c.sampling.sad_share = None          # --sad_step replaces the run's sad_share
    if mode != "sad" and args.sad_share is None:
      c.sampling.sad_share = 0.5           # no SAD step to check outside SAD
  try:
    validate(c)
  except ConfigError as e:
    flag = next((f for f, k in SAMPLING_FLAGS.items() if e.key == f"sampling.{k}"), None)
    if flag is None:
      raise SystemExit(f"the run's config is invalid: {e}")
    if flag not in given and flag == "sad_step" and "num_steps" in given:
      # The run's sad_step does not fit the --num_steps asked for.
      raise SystemExit(f"--num_steps={args.num_steps}: leaves no room for the run's "
                       f"sampling.sad_step={c.sampling.sad_step} (give --sad_step too): "
                       f"{e.allowed}")
    raise SystemExit(f"--{flag}={getattr(args, flag, e.value)!r}: {e.allowed}")


def check_prompt_tokens(prompts, tokenizer, *, strict: bool) -> list[str]:
  """Warnings (or, with strict, an error) about what the tokenizer does to each prompt."""
  notes = []
  vocab = set(getattr(tokenizer, "vocab", ()) or ())
  ctx = int(tokenizer.context_length)
  for i, p in enumerate(prompts):
    where = f"prompt {i + 1} ({p[:40]!r}{'...' if len(p) > 40 else ''})"
    if hasattr(tokenizer, "words") and vocab:
      words = tokenizer.words(p)
      unknown = sorted({w for w in words if w not in vocab})
      if unknown:
        msg = f"{where}: words outside the vocabulary, encoded as <unk>: {unknown}"
        if strict:
          raise SystemExit(f"--strict: {msg}")
        notes.append(msg)
      dropped = sorted({ch for ch in p.lower() if not ch.isascii()})
      if dropped:
        notes.append(f"{where}: characters the word tokenizer drops: {dropped}")
      n = len(words)
    else:
      n = len(tokenizer.encode_text(p)) if hasattr(tokenizer, "encode_text") else 0
    if n > ctx - 2:
      notes.append(f"{where}: {n} tokens but the text context holds {ctx - 2}; the rest is cut")
  for n in notes:
    print(f"warning: {n}", file=sys.stderr)
  return notes


def vocabulary(config) -> Optional[tuple]:
  """The caption tokenizer's words (word-level tokenizers), else None."""
  from dream_jax.data import text_tokenizer
  return getattr(text_tokenizer(config), "vocab", None)


def _read_config(workdir: str):
  from dream_jax.train.inference import load_config   # fills keys older workdirs predate
  return load_config(workdir)


def resolve_mode(args) -> str:
  if args.mode:
    return args.mode
  if args.num_candidates is not None or args.sad_step is not None or args.sad_share is not None:
    return "sad"
  return "plain"


def check_workdir(workdir: str, need_checkpoint: bool = True) -> None:
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise SystemExit(f"{workdir}/config.json not found: is --workdir a training workdir?")
  if not need_checkpoint:
    return
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
  if args.list_words:
    check_workdir(args.workdir, need_checkpoint=False)
    words = vocabulary(_read_config(args.workdir))
    print(" ".join(words) if words else "this run's tokenizer (CLIP BPE) encodes any text")
    return dict(words=list(words or ()))
  if not args.out:
    raise SystemExit("--out=OUT.png is required (the grid; singles are written beside it)")
  prompts = read_prompts(args)
  check_out(args.out)
  mode = resolve_mode(args)
  if args.num_candidates is not None and args.num_candidates < 1:
    raise SystemExit(f"--num_candidates={args.num_candidates}: K must be >= 1")
  if args.num_candidates is not None and args.num_candidates > MAX_CANDIDATES:
    raise SystemExit(f"--num_candidates={args.num_candidates}: at most {MAX_CANDIDATES} "
                     "candidates per prompt")
  if mode == "plain" and (args.num_candidates is not None or args.sad_step is not None
                          or args.sad_share is not None):
    raise SystemExit("--mode=plain decodes one image per prompt: --num_candidates, "
                     "--sad_step and --sad_share need --mode=sad or best_of_k")
  if args.show_candidates and mode != "sad":
    raise SystemExit("--show_candidates needs SAD (--mode=sad or --num_candidates/--sad_step)")
  check_workdir(args.workdir)

  import jax
  from dream_jax import sampling
  from dream_jax.utils import images as im
  from dream_jax.sampling import schedule as sl

  t0 = time.perf_counter()
  config, model, variables, frozen = (loader or default_loader)(args.workdir, args.step)
  check_sampling_flags(args, config, mode)
  from dream_jax.data import text_tokenizer
  notes = check_prompt_tokens(prompts, text_tokenizer(config), strict=args.strict)
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

  paths = im.save_grid_and_singles(out["images"], args.out, captions=prompts)
  summary = dict(mode=mode, prompts=prompts, out=paths[0], singles=paths[1:],
                 seconds_load=round(t_load, 2), seconds_sample=round(t_sample, 2),
                 warnings=notes)
  if "scores" in out:
    summary.update(scores=np.round(out["scores"], 4).tolist(),
                   winner=np.asarray(out["winner"]).tolist())
  if mode == "sad":
    summary.update(sad_step=out["sad_step"], revealed_share=out["revealed_share"])
    if args.show_candidates:
      stem, ext = os.path.splitext(args.out)
      fig = im.candidates_figure(out["candidates"], out["scores"], out["winner"], prompts,
                                 step=out["sad_step"],
                                 undecoded=im.undecoded_tokens(out["candidate_tokens"]))
      summary["candidates_figure"] = im.save_png(fig, f"{stem}_candidates{ext or '.png'}")
  print(json.dumps(summary, indent=1))
  return summary


if __name__ == "__main__":
  from dream_jax.utils import xla_cpu
  xla_cpu.use_default_flags()   # the numerics main.py trains with (before jax starts)
  main(sys.argv[1:])
