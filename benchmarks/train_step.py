"""Training-step benchmark at the official PyTorch DREAM's anchor shapes (docs/PERF_ANCHOR.md).

  python benchmarks/train_step.py --shapes=anchor      # configs/anchor_demo.py, batch 32
  python benchmarks/train_step.py --shapes=b16         # DREAM-B/16 shapes, batch 4 (slow compile on CPU)
  python benchmarks/train_step.py --shapes=all [--rounds=3] [--reps=3]
  python benchmarks/train_step.py --shapes=anchor --official=/path/to/dream \
      [--official_pythonpath=/path/with/timm]         # side by side with the official code

Inputs are random arrays of the right shapes, like the official measurement: cached VAE
latent moments and frozen T5 features (`cond_embeddings`), so neither frozen network runs;
dropout 0.1 and mask ratio fixed at 0.5. One step is forward, backward, global-norm clip,
AdamW and the EMA update, on both sides. With --official the official model is built at the
same shapes in a subprocess (benchmarks/official/worker.py: torch, 2 threads, CPU shims) and
both are timed alternately in this run: --rounds rounds of --reps steps each side, order
flipped every round; the medians with [min-max] and ours / official are printed. Without it
only our numbers are printed, with "no ratio measured". Also printed: compile time, FLOPs
per step (analytic: forward matmuls x3, the diffusion head only on masked tokens; and XLA's
`compiled.cost_analysis()`, which may count every `lax.switch` bucket branch), the achieved
GFLOP/s and MFU when an accelerator is present.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_jax.utils import malloc, xla_cpu  # noqa: E402

if __name__ == "__main__":       # our side runs under the allocator main.py uses
  malloc.reexec_with_tuned_malloc()
  xla_cpu.use_default_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402

PEAK_TFLOPS = {"TPU v4": 275, "TPU v5 lite": 197, "TPU v5e": 197, "TPU v5p": 459,
               "TPU v6 lite": 918, "H100": 989, "H200": 989, "A100": 312, "L4": 121}


from benchmarks.official import timing  # noqa: E402


def config_for(shapes: str):
  if shapes == "demo":                     # the CPU demo's own step (not an official anchor)
    from configs import demo
    return demo.get_config()
  if shapes == "anchor":
    from configs import anchor_demo
    return anchor_demo.get_config()
  from configs import common, dream_b16
  c = dream_b16.get_config()
  c.batch_size = 4
  c.compute_dtype = "float32"
  c.masking.update(kind="fixed", fixed_ratio=0.5, group_size=4)
  c.model.update(attn_dropout=0.1, proj_dropout=0.1)
  # Identical work on both sides: the official step does not recompute activations
  # (grad_checkpointing off), and batch 4 fits in CPU memory without rematerialisation.
  c.model.remat = "none"
  # The fixed ratio gives the encoder and the head static lengths (no buckets); the CLIP
  # tower keeps its prefix buckets as in the measurements before paper_config set 1 for
  # batch 2048 (the benchmark's captions end at position 11: the 16-position prefix runs).
  c.model.text_buckets = common.base_config().model.text_buckets
  c.tokenizer.tiny_random = True        # latents are fed; the VAE never runs
  c.text.tiny_random = True             # T5 features are fed; only the empty caption runs
  return c


def synthetic_batch(config, rng: np.random.Generator) -> dict:
  from dream_jax.models.patchify import token_layout
  b, d, t = config.batch_size, token_layout(config.tokenizer, config.data.image_size), config.text
  ls, ch = d["latent_size"], d["channels"]
  clip = t.tokenizer == "clip_bpe"
  ids = rng.integers(4, min(t.vocab_size, 49406), (b, t.context_length)).astype(np.int32)
  ids[:, 0] = 49406 if clip else 2                 # start of text (WordTokenizer: 2)
  ids[:, 11] = 49407 if clip else 3                # end of text, then padding
  ids[:, 12:] = 0
  batch = dict(clip_ids=ids)
  if config.tokenizer.kind == "vae":
    batch["latent_moments"] = rng.normal(size=(b, 2, ls, ls, ch)).astype(np.float32)
  else:
    batch["image"] = rng.uniform(-1, 1, (b, ls, ls, 3)).astype(np.float32)
  if t.cond_encoder in ("t5", "minilm"):
    batch["cond_embeddings"] = rng.normal(size=(b, t.cond_len, t.cond_dim)).astype(np.float32)
    batch["cond_mask"] = np.ones((b, t.cond_len), bool)
  return batch


def analytic_flops(config) -> float:
  """Forward+backward FLOPs (3 x forward matmuls) of one step at the configured fixed ratio."""
  from dream_jax.models.patchify import token_layout
  from dream_jax.tools.aot import block_flops, head_eval_flops
  m, t, d = config.model, config.text, token_layout(config.tokenizer, config.data.image_size)
  b, l, c = config.batch_size, d["seq_len"], d["token_dim"]
  r = config.masking.fixed_ratio if config.masking.kind == "fixed" else 0.5
  masked = int(np.ceil(l * r))
  mlp = m.mlp_dim or int(m.width * m.mlp_ratio)
  dmlp = m.mlp_dim or int(m.dec_width * m.mlp_ratio)
  t_enc = m.buffer_size + l - masked
  t_dec = m.buffer_size + l
  lc = t.cond_len if t.cond_encoder in ("t5", "minilm") else t.context_length
  dc = t.cond_dim if t.cond_encoder in ("t5", "minilm") else t.width
  f = 2 * l * c * m.width                                          # token embedding
  f += m.depth * block_flops(t_enc, m.width, mlp)                  # encoder
  f += 2 * (m.width * m.proj_hidden + m.proj_hidden ** 2 + m.proj_hidden * m.embed_dim)
  f += t.layers * block_flops(t.context_length, t.width, int(t.width * t.mlp_ratio))
  f += 2 * t.width * m.embed_dim                                   # text projection
  f += 2 * lc * dc * m.dec_width + m.aligner_depth * block_flops(lc, m.dec_width, dmlp)
  f += 2 * t_enc * m.width * m.dec_width                           # encoder -> decoder
  f += m.dec_depth * block_flops(t_dec, m.dec_width, dmlp, ctx=lc, ctx_width=m.dec_width)
  w = m.diff_width
  rows = masked * m.diffusion_batch_mul
  head = head_eval_flops(c, w, m.diff_depth) + 2 * (m.dec_width * w + w * w)
  f += rows * head
  return 3.0 * b * f


def xla_flops(compiled) -> float:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return float((ca or {}).get("flops", float("nan")))


def prepare(shapes: str, rng_impl: str | None = None):
  """Our compiled train step at `shapes`: (run(reps) -> [seconds], info dict). One untimed
  step runs first (it warms caches and allocations)."""
  from dream_jax.train import sharding
  from dream_jax.train.trainer import Trainer
  config = config_for(shapes)
  if rng_impl:
    config.rng_impl = rng_impl
  t0 = time.perf_counter()
  tr = Trainer(config)
  box = dict(state=tr.fresh_state())
  batch = sharding.global_batch(tr.mesh, synthetic_batch(config, np.random.default_rng(0)))
  with jax.set_mesh(tr.mesh):
    compiled = tr.train_step.lower(box["state"], tr.frozen, batch).compile()
  compile_s = time.perf_counter() - t0
  # The compile's transient memory goes back to the OS: at B/16 the official worker beside
  # us needs ~11 GB, and what our allocator still caches from the compile is never reused.
  malloc.release_free_memory()
  usage, cpu = timing.Rusage(), []

  def run(reps: int) -> list[float]:
    times = []
    with jax.set_mesh(tr.mesh), usage:
      for _ in range(reps):
        s, c = time.perf_counter(), time.process_time()
        box["state"], box["metrics"] = compiled(box["state"], tr.frozen, batch)
        jax.block_until_ready((box["state"], box["metrics"]))
        times.append(time.perf_counter() - s)
        cpu.append(time.process_time() - c)
    return times

  run(1)
  usage.reset()                         # count the timed steps only
  cpu.clear()
  an, xf = analytic_flops(config), xla_flops(compiled)
  info = dict(shapes=shapes, batch=config.batch_size, compile_s=compile_s,
              analytic_gflop=an / 1e9, xla_gflop=xf / 1e9, device=jax.devices()[0].device_kind,
              loss=float(box["metrics"]["loss"]), usage=usage, compiled=compiled,
              cpu=cpu)
  return run, info


def report(info: dict, ours: dict, official: dict | None) -> str:
  step_s = ours["median"]
  an = info["analytic_gflop"] * 1e9
  kind = info["device"]
  peak = next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()), None)
  mfu = ""
  if jax.devices()[0].platform != "cpu" and peak:
    mfu = f", MFU {an / step_s / (peak * 1e12 * jax.device_count()):.1%}"
  s = info["shapes"]
  return "\n".join([
      timing.ratio_line(f"[{s}] train step, batch {info['batch']} on {kind}", ours, official),
      f"[{s}] {info['batch'] / step_s:.1f} ex/s, compile {info['compile_s']:.1f} s; FLOPs/step: "
      f"analytic {info['analytic_gflop']:.1f} GFLOP, XLA cost analysis {info['xla_gflop']:.1f} "
      f"GFLOP; achieved {an / step_s / 1e9:.1f} GFLOP/s{mfu}",
      f"[{s}] ours {info['usage'].line(ours['n'])}; {timing.load_line()}"])


def floor_line(info: dict, official: dict | None) -> tuple[float, float]:
  """Prints the GEMM floor: the analytic matmul FLOPs at the best matmul rate this machine
  reaches, measured now (benchmarks/gemm_rate.py), against the official median when it ran
  in this run. Returns (peak GFLOP/s, floor seconds)."""
  from benchmarks import gemm_rate
  peak, _ = gemm_rate.peak_gflops()
  floor = info["analytic_gflop"] / peak
  line = (f"[{info['shapes']}] GEMM floor: {info['analytic_gflop']:.1f} GFLOP at this "
          f"machine's measured matmul peak {peak:.1f} GFLOP/s = {floor:.3f} s")
  if official:
    line += f" = {floor / official['median']:.3f}x the official median"
  print(line, flush=True)
  return round(peak, 1), round(floor, 3)


def bench(shapes: str, rounds: int, reps: int, rng_impl=None, official=None,
          official_pythonpath="") -> dict:
  """Times our step (and the official one when `official` is a path) alternately."""
  run, info = prepare(shapes, rng_impl)
  runners = dict(ours=run)
  proc = None
  if official:
    proc = timing.OfficialProcess(official, shapes, ("train",), extra_path=official_pythonpath)
    runners["official"] = proc.runner("train")
  try:
    times = timing.alternate(runners, rounds, reps)
  finally:
    if proc:
      proc.close()
  ours = timing.summarize(times["ours"])
  off = timing.summarize(times["official"]) if official else None
  print(report(info, ours, off), flush=True)
  print(f"[{shapes}] " + timing.cpu_line(info["cpu"], proc.cpu["train"] if proc else []),
        flush=True)
  info["gemm_peak_gflops"], info["gemm_floor_s"] = floor_line(info, off)
  info["usage"] = info["usage"].as_dict()
  info.pop("compiled")
  return dict(info, ours=ours, official=off, times=times,
              official_ready=proc.ready if proc else None)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default="anchor", choices=("anchor", "b16", "all", "demo"))
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds (each side per round)")
  p.add_argument("--reps", type=int, default=3, help="timed steps per side per round")
  p.add_argument("--official", default="", help="local checkout of the official DREAM code")
  p.add_argument("--official_pythonpath", default="",
                 help="extra PYTHONPATH of the official subprocess (e.g. where timm is)")
  from configs.common import RNG_IMPLS
  p.add_argument("--rng_impl", default=RNG_IMPLS[0], choices=RNG_IMPLS,
                 help="config.rng_impl: the PRNG behind the dropout masks")
  a = p.parse_args(argv)
  if a.official and a.shapes == "demo":
    p.error("--official needs official shapes (anchor, b16 or all)")
  out = []
  for s in (("anchor", "b16") if a.shapes == "all" else (a.shapes,)):
    out.append(bench(s, a.rounds, a.reps, a.rng_impl, a.official, a.official_pythonpath))
  return out


if __name__ == "__main__":
  main()
