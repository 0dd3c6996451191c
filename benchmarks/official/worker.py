"""Subprocess that builds the official DREAM at benchmark shapes and times it on request.

  python benchmarks/official/worker.py --official=PATH --tasks=train|plain,sad --shapes=anchor

PATH is a local checkout of the official DREAM repository with MAR's `diffusion/` and
`models/diffloss.py` beside its own files. The CPU shims (`shims.py`) are installed first;
the official files are imported, never edited. Protocol on stdin/stdout (one JSON object
per line, so the parent can alternate it with our code in the same run):
  -> {"run": N, "task": T}  <- {"times": [s, ...], "cpu": [s, ...]}   N timed repetitions
  -> {"quit": true}
The first line written is {"ready": true, "build_s": s, "warmup_s": {task: s}} after one
untimed warm-up repetition of each task. Anything the official code prints goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.official import shapes as S  # noqa: E402
from benchmarks.official import shims  # noqa: E402


class FixedRatio:
  """Mask-ratio generator returning `ratio` (the official masking then marks the first
  ceil(L * ratio) entries of each random order, as in a training step)."""

  def __init__(self, ratio: float):
    self.ratio = ratio

  def rvs(self, *_):
    return (self.ratio, 0.0)


def build(shapes: str):
  import torch
  import torch.nn as nn
  from functools import partial
  from models.dream import DREAM
  from models.layers import CLIPTextCfg
  kwargs = dict(S.MODELS[shapes])
  kwargs["num_sampling_steps"] = S.SAMPLE[shapes]["diffusion"]
  torch.manual_seed(0)
  model = DREAM(text_cfg=CLIPTextCfg(**S.TEXT[shapes]),
                norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
  model.mask_ratio_generator = FixedRatio(S.TRAIN[shapes]["mask_ratio"])
  return model


def text_ids(torch, n: int, ctx: int, gen):
  """CLIP BPE ids like the benchmark's: start 49406, 10 random words, end 49407 at 11, pad 0."""
  ids = torch.randint(4, 49406, (n, ctx), generator=gen)
  ids[:, 0], ids[:, 11], ids[:, 12:] = 49406, 49407, 0
  return ids


def train_rep(shapes: str, model):
  """One training step: forward (MAR + 0.005 x contrastive), backward, clip, AdamW, EMA."""
  import torch
  o, m, t = S.OPTIM, S.MODELS[shapes], S.TEXT[shapes]
  b = S.TRAIN[shapes]["batch"]
  side = m["img_size"] // m["vae_stride"]
  gen = torch.Generator().manual_seed(0)
  latents = torch.randn(b, m["vae_embed_dim"], side, side, generator=gen)
  ids = text_ids(torch, b, t["context_length"], gen)
  t5 = torch.randn(b, m["text_max_len"], m["t5_embed_dim"], generator=gen)
  labels = torch.zeros(b, dtype=torch.long)
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=o["lr"], betas=o["betas"], weight_decay=o["weight_decay"])
  ema = [p.detach().clone() for p in params]
  model.train()

  def rep():
    loss, loss_clip, _, _ = model(latents, ids, labels, t5)
    total = o["w_mar"] * loss + o["w_clip"] * loss_clip
    total.backward()
    torch.nn.utils.clip_grad_norm_(params, o["grad_clip"])
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - o["ema"])
    return float(total.detach())
  return rep


def sample_rep(shapes: str, model, sad: bool):
  """One decode of P images (CFG doubles the T5 batch: conditional rows, then empty ones)."""
  import torch
  s, m, t = S.SAMPLE[shapes], S.MODELS[shapes], S.TEXT[shapes]
  p = s["prompts"]
  gen = torch.Generator().manual_seed(0)
  t5 = torch.randn(2 * p, m["text_max_len"], m["t5_embed_dim"], generator=gen)
  ids = text_ids(torch, p, t["context_length"], gen)
  model.eval()
  kw = dict(bsz=p, num_iter=s["steps"], cfg=s["cfg"], cfg_schedule="linear",
            text_embedding=t5, temperature=1.0)

  def rep():
    with torch.no_grad():
      if sad:
        out = model.sample_tokens_with_clip_critic_once(
            **kw, text=ids, num_candidates=s["k"], clip_critic_threshold=s["t"])
      else:
        out = model.sample_tokens(**kw)
    return float(out.float().mean())
  return rep


def serve(reps: dict, stdin, stdout, ready: dict) -> None:
  stdout.write(json.dumps(dict(ready, ready=True)) + "\n")
  stdout.flush()
  for line in stdin:
    msg = json.loads(line)
    if msg.get("quit"):
      break
    times, cpu = [], []
    rep = reps[msg["task"]]
    for _ in range(int(msg["run"])):
      t0, c0 = time.perf_counter(), time.process_time()
      rep()
      times.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
    stdout.write(json.dumps(dict(times=times, cpu=cpu)) + "\n")
    stdout.flush()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--official", required=True)
  p.add_argument("--tasks", required=True, help="comma separated: train | plain,sad")
  p.add_argument("--shapes", choices=tuple(S.MODELS), required=True)
  p.add_argument("--threads", type=int, default=2)
  a = p.parse_args(argv)
  shims.install(os.path.abspath(a.official), a.threads)
  out = sys.stdout
  with contextlib.redirect_stdout(sys.stderr):      # the official code prints; keep the pipe clean
    t0 = time.perf_counter()
    model = build(a.shapes)
    reps = {}
    for task in a.tasks.split(","):
      reps[task] = (train_rep(a.shapes, model) if task == "train" else
                    sample_rep(a.shapes, model, task == "sad"))
    build_s = time.perf_counter() - t0
    warm = {}
    for task, rep in reps.items():
      t0 = time.perf_counter()
      rep()
      warm[task] = time.perf_counter() - t0
    serve(reps, sys.stdin, out, dict(build_s=build_s, warmup_s=warm))


if __name__ == "__main__":
  main()
