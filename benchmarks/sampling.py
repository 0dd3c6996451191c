"""Sampling benchmark at the official PyTorch DREAM's anchor shapes (docs/PERF_ANCHOR.md).

  python benchmarks/sampling.py --shapes=anchor     # 16 images, 16 steps, 50 diffusion steps
  python benchmarks/sampling.py --shapes=b16        # 2 images, 64 steps, 100 diffusion steps (slow on CPU)
  python benchmarks/sampling.py --shapes=all [--rounds=2] [--reps=1] [--modes=plain,sad,best_of_k]
      [--encoder_buckets=4] [--head_buckets=4]
  python benchmarks/sampling.py --shapes=anchor --official=/path/to/dream \
      [--official_pythonpath=/path/with/timm]   # side by side: plain and SAD vs the official

With --official the official model is built at the same shapes in a subprocess
(benchmarks/official/worker.py) and its `sample_tokens` / `sample_tokens_with_clip_critic_once`
(the official SAD) are timed alternately with ours in this run (--rounds rounds of --reps
decodes per side); best-of-K has no official counterpart and is timed on our side only.

Like the official measurement: random weights, fp32, CFG 3.0 with the linear schedule, the
frozen T5 features fed as random `cond_embeddings` (the T5 and the VAE decoder do not run;
the programs stop at the decoded tokens). Modes:
  plain      P images, N steps;
  sad        K=4 candidates per prompt batched (K*P), selection after T steps (anchor: 4 of
             16, B/16: 32 of 64), winners finished at batch P;
  best_of_k  K*P independent decodes + the internal full-image rerank.
Prints compile seconds (lower + compile, apart from run time), run seconds (median over
the rounds, after the compile and one untimed decode) with the process's CPU seconds and
the load average (the CPU machine is shared: check `cores_busy` and `load_avg`), SAD's cost
against plain and best-of-K next to the analytic (K*T + N - T) / (K*N), and the static
padding the sampler pays: encoder tokens (visible count rounded up to a bucket) and head
rows (revealed count rounded up to a bucket), relative to the exact counts.

Measured numbers, with their commands, machine and load: docs/RESULTS.md ("Benchmarks").
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_jax.utils import malloc, xla_cpu  # noqa: E402

if __name__ == "__main__":       # our side runs under the allocator main.py uses
  malloc.reexec_with_tuned_malloc()
  xla_cpu.use_default_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.official import timing  # noqa: E402

SHAPES = {  # images P, decoding steps N, diffusion steps, K, T
    "anchor": dict(prompts=16, steps=16, diffusion="50", k=4, t=4),
    "b16": dict(prompts=2, steps=64, diffusion="100", k=4, t=32),
}


class TokensOnly:
  """Stands in for ImageTokens: the programs return tokens (the VAE decoder is not timed,
  as in the official measurement)."""

  def from_tokens(self, frozen, tokens):
    return tokens


def config_for(shapes: str):
  if shapes == "anchor":
    try:
      from configs import anchor_demo
      c = anchor_demo.get_config()
    except ImportError:                 # built inline when the config file is absent
      from configs import common
      c = common.base_config()
      c.model.update(width=256, depth=4, heads=4, dec_width=256, dec_depth=4, dec_heads=4,
                     buffer_size=16, aligner_depth=2, diff_depth=3, diff_width=256)
      c.tokenizer.update(tiny_random=True)
      c.data.image_size = 128
      c.text.update(width=256, layers=4, heads=4, tiny_random=True, cond_len=32)
      c.masking.group_size = 32
      c.batch_size = 32
  else:
    from configs import dream_b16
    c = dream_b16.get_config()
    c.tokenizer.tiny_random = True
    c.text.tiny_random = True
  c.compute_dtype = "float32"
  s = SHAPES[shapes]
  c.sampling.update(num_steps=s["steps"], num_diffusion_steps=s["diffusion"], cfg=3.0,
                    cfg_schedule="linear", sad_candidates=s["k"], sad_step=s["t"])
  return c


def inputs(config, p: int, rng: np.random.Generator):
  t = config.text
  ids = rng.integers(4, 49406, (p, t.context_length)).astype(np.int32)
  ids[:, 0], ids[:, 11], ids[:, 12:] = 49406, 49407, 0
  feats = rng.standard_normal((p, t.cond_len, t.cond_dim)).astype(np.float32)
  batch = dict(clip_ids=ids, cond_embeddings=feats, cond_mask=np.ones((p, t.cond_len), bool))
  uncond = {k: v[:1] for k, v in batch.items()}
  uncond["cond_embeddings"] = rng.standard_normal(feats[:1].shape).astype(np.float32)
  return jax.device_put(batch), jax.device_put(uncond)


def padding_report(dec) -> dict:
  """Static padding of the per-step buckets (tokens/rows, summed over steps, per image)."""
  from dream_jax.sampling import schedule as sl
  s = dec.schedule
  buf = dec.model.spec.buffer_size
  vis = s.visible
  if dec.masked_path:
    enc_run = np.full_like(vis, s.seq_len)
  else:
    enc_run = sl.rounded_up(vis, dec.enc_sizes)
  head_run = sl.rounded_up(s.revealed, dec.head_sizes)
  return dict(enc_sizes=list(dec.enc_sizes), head_sizes=list(dec.head_sizes),
              encoder_tokens_exact=int((vis + buf).sum()),
              encoder_tokens_run=int((enc_run + buf).sum()),
              encoder_vs_full_length=round(float((enc_run + buf).sum()) /
                                           (s.num_steps * (s.seq_len + buf)), 3),
              head_rows_exact=int(s.revealed.sum()), head_rows_run=int(head_run.sum()),
              head_rows_single_max=int(s.max_revealed * s.num_steps))


def encoder_flops(dec, visible: int) -> int:
  """Matmul FLOPs of one image's encoder pass with `visible` decoded tokens, as
  `MarDecoder.encode` runs it: z_proj on all L tokens, then the blocks on buffer + the
  visible count rounded up to its bucket (all L on the 'masked' path)."""
  from dream_jax.sampling import schedule as sl
  from dream_jax.tools.aot import block_flops
  m = dec.model.spec
  n = m.seq_len if dec.masked_path else int(sl.rounded_up(np.asarray([visible]), dec.enc_sizes)[0])
  return 2 * m.seq_len * m.token_dim * m.width + m.depth * block_flops(
      m.buffer_size + n, m.width, m.mlp_dim)


def decoder_flops(dec, rows: int) -> dict:
  """Matmul FLOPs of one image's decoder call in a decoding step, as `DREAM.decode` runs it
  for `rows` conditions per image (2 under CFG) and z at the largest revealed count n of any
  step: the input embedding and block 0's self-attention once per image, every other part
  per row, the last block's outputs only at n slots (its qkv still on every slot: keys and
  values). 'ctx_kv' is the cross-attention's key/value projection of the text, which the
  traced step computes but XLA hoists out of the step loop (once per program)."""
  m = dec.model.spec
  S, d, mlp, lc = m.buffer_size + m.seq_len, m.dec_width, m.dec_mlp_dim, m.cond_len
  n = int(dec.head_sizes[-1])
  f = 2 * S * m.width * d                                              # decoder_embed
  for i in range(m.dec_depth):
    q = n if i == m.dec_depth - 1 else S                               # query slots
    self_attn = 2 * S * 3 * d * d + 4 * q * S * d + 2 * q * d * d       # qkv, q.k + p.v, proj
    rest = 2 * q * 2 * d * d + 2 * q * 2 * d * mlp + 4 * q * lc * d     # cross q, proj; MLP
    f += (1 if i == 0 else rows) * self_attn + rows * rest
  return dict(decoder=f, ctx_kv=rows * m.dec_depth * 2 * lc * 2 * d * d)


def step_flops(dec, images: int, s: int, shared: int = 1) -> dict:
  """Matmul FLOPs of decoding step s for `images` images, by part (as `MarDecoder.step`
  runs it: buckets included, encoder and decoder once per image (`decoder_flops`), head on
  2 rows per image under CFG, `num_diffusion_steps` head evaluations per step; with
  `shared` > 1 the encoder and decoder run on one image of every `shared`, the head on all
  of them). 'ctx_kv' (see `decoder_flops`) is what the traced step holds but XLA hoists."""
  from dream_jax.sampling import schedule as sl
  from dream_jax.tools.aot import head_eval_flops
  m, sch = dec.model.spec, dec.schedule
  rows = 2 if dec.opts.guided else 1
  C, dd = m.token_dim, m.dec_width
  w = m.diff_width
  per_eval = head_eval_flops(C, w, m.diff_depth)
  n_head = int(sl.rounded_up(np.asarray([int(sch.revealed[s])]), dec.head_sizes)[0])
  n_diff = int(dec.model.diffloss.sample_diffusion(dec.opts.num_diffusion_steps).num_timesteps)
  head = rows * n_head * (2 * dd * w + n_diff * per_eval)       # cond_embed once, then the chain
  t_emb = n_diff * 2 * (256 * w + w * w)       # time embedding: one row per diffusion step
  once = images // shared
  dec_f = decoder_flops(dec, rows)
  return dict(encoder=once * encoder_flops(dec, int(sch.visible[s])),
              decoder=once * dec_f["decoder"], ctx_kv=once * dec_f["ctx_kv"],
              head=images * head + t_emb)


def analytic_flops(dec, mode: str, prompts: int, k: int, t: int) -> dict:
  """Matmul FLOPs of one decode of `mode` (plain | sad | best_of_k), by part and 'total'.
  The text side (aligner, CLIP tower, SAD's projection MLP) is a few prompts' worth and
  left out; SAD's scoring encoder pass and best-of-K's full-image rerank are counted, and
  the text's cross-attention keys/values once per program phase (hoisted out of the loops:
  'ctx_kv' of `step_flops` is not summed per step)."""
  n, sch = dec.opts.num_steps, dec.schedule
  kv = decoder_flops(dec, 2 if dec.opts.guided else 1)["ctx_kv"]
  if mode == "plain":
    parts = [step_flops(dec, prompts, s) for s in range(n)] + [dict(decoder=prompts * kv)]
  elif mode == "sad":
    parts = [step_flops(dec, prompts * k, s, shared=k if s == 0 else 1) for s in range(t)]
    parts += [step_flops(dec, prompts, s) for s in range(t, n)]
    scored = int(sch.seq_len - sch.masked_after[t - 1])       # decoded when scored
    parts.append(dict(encoder=prompts * k * encoder_flops(dec, scored)))
    # the shared step 0 (K > 1 only), the candidates' loop (if it has steps), the winners'
    loop_steps = t - 1 if k > 1 else t
    phases = prompts * (k > 1) + prompts * k * (loop_steps > 0) + prompts * (t < n)
    parts.append(dict(decoder=phases * kv))
  elif mode == "best_of_k":
    parts = [step_flops(dec, prompts * k, s) for s in range(n)]
    parts.append(dict(encoder=prompts * k * encoder_flops(dec, sch.seq_len),
                      decoder=prompts * k * kv))
  else:
    raise ValueError(f"unknown mode {mode!r}")
  out = {key: float(sum(p.get(key, 0) for p in parts)) for key in ("encoder", "decoder", "head")}
  out["total"] = sum(out.values())
  return out


def setup(shapes: str, enc_b=None, head_b=None):
  """Builds the random-weight model and the sampler's programs at `shapes`.

  Returns (progs, args, info): progs maps a mode to its (unjitted) decode function, args
  are the positional arguments every program takes, info the run's static facts.
  """
  from dream_jax.train.components import build_model
  from dream_jax.conditioning import Conditioning
  from dream_jax.sampling import mar, sad
  c = config_for(shapes)
  if enc_b is not None:
    c.sampling.encoder_buckets = enc_b
  if head_b is not None:
    c.sampling.head_buckets = head_b
  s = SHAPES[shapes]
  model = build_model(c)
  t0 = time.perf_counter()
  variables = jax.jit(model.init)(jax.random.key(0))
  jax.block_until_ready(variables)
  t_init = time.perf_counter() - t0
  np_rng = np.random.default_rng(0)
  batch, uncond = inputs(c, s["prompts"], np_rng)
  text = Conditioning(model, eot_id=49407, empty=uncond, caption_drop=0.0)
  fns = mar.TextFns(condition=lambda v, f, b: text.condition(v, f, b),
                    embed=text.text_embedding, detokenize=TokensOnly().from_tokens)
  dec = mar.MarDecoder(model, mar.options_from_config(c))
  progs = dict(
      plain=functools.partial(mar.decode_plain, dec, fns),
      sad=functools.partial(sad.decode_sad, dec, fns, num_candidates=s["k"], sad_step=s["t"]),
      best_of_k=functools.partial(sad.decode_best_of_k, dec, fns, num_candidates=s["k"]))
  args = (variables, {}, batch, uncond, jax.random.key(1), jnp.float32(1.0), jnp.float32(3.0))
  info = dict(shapes=shapes, images=s["prompts"], steps=s["steps"],
              diffusion_steps=s["diffusion"], K=s["k"], T=s["t"], init_s=round(t_init, 2),
              devices=str(jax.devices()[0].device_kind), padding=padding_report(dec),
              gflop={mode: {part: round(v / 1e9, 2) for part, v in
                            analytic_flops(dec, mode, s["prompts"], s["k"], s["t"]).items()}
                     for mode in progs})
  return progs, args, info


def prepare_mode(shapes: str, mode: str):
  """(run_once, compiled) of one sampling mode's program (for benchmarks/profile_breakdown.py)."""
  progs, args, _ = setup(shapes)
  compiled = jax.jit(progs[mode]).lower(*args).compile()
  jax.block_until_ready(compiled(*args))            # untimed: first-call allocations
  return (lambda: jax.block_until_ready(compiled(*args))), compiled


def bench(shapes: str, modes, rounds: int, reps: int, enc_b=None, head_b=None, official="",
          official_pythonpath="") -> dict:
  from dream_jax.sampling import sad
  s = SHAPES[shapes]
  progs, args, out = setup(shapes, enc_b, head_b)
  runners, compile_s, cpu = {}, {}, {m: [] for m in modes}
  for mode in modes:
    fn = jax.jit(progs[mode])
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s[mode] = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))          # untimed: first-call allocations
    print(f"[{shapes}] {mode}: compiled in {compile_s[mode]:.1f} s", flush=True)

    def run(n, compiled=compiled, mode=mode):
      times = []
      for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
        cpu[mode].append(time.process_time() - c0)
      return times
    runners[mode] = run
  side_tasks = [m for m in modes if m in ("plain", "sad")] if official else []
  proc = None
  if side_tasks:
    proc = timing.OfficialProcess(official, shapes, tuple(side_tasks),
                                  extra_path=official_pythonpath)
    for m in side_tasks:
      runners["official_" + m] = proc.runner(m)
  try:
    times = timing.alternate(runners, rounds, reps)
  finally:
    if proc:
      proc.close()
  for mode in modes:
    ours = timing.summarize(times[mode])
    off = timing.summarize(times["official_" + mode]) if mode in side_tasks else None
    run = ours["median"]
    out[mode] = dict(compile_s=round(compile_s[mode], 2), run_s=round(run, 3),
                     runs=[round(x, 3) for x in times[mode]],
                     # CPU seconds of this process per run and cores busy on average: on a
                     # shared machine wall time depends on the neighbours, CPU time less so.
                     cpu_s=round(statistics.median(cpu[mode]), 3),
                     cores_busy=round(statistics.median(cpu[mode]) / run, 2),
                     load_avg=round(os.getloadavg()[0], 2), summary=ours, official=off,
                     official_cpu=proc.cpu[mode] if mode in side_tasks else None)
    print(timing.ratio_line(f"[{shapes}] {mode} (compile {compile_s[mode]:.1f} s)", ours, off),
          flush=True)
    print(f"[{shapes}] {mode} " + timing.cpu_line(
        cpu[mode], proc.cpu[mode] if mode in side_tasks else []), flush=True)
  if proc:
    out["official_ready"] = proc.ready
  print(f"[{shapes}] {timing.load_line()}", flush=True)
  floor_report(out, modes, shapes)
  if "sad" in out and "plain" in out:
    k, t, n = s["k"], s["t"], s["steps"]
    out["sad_vs_plain"] = round(out["sad"]["run_s"] / out["plain"]["run_s"], 3)
    out["sad_vs_plain_analytic"] = round(k * sad.sad_cost(k, t, n), 3)   # plain: N passes
    if "best_of_k" in out:
      out["sad_vs_best_of_k"] = round(out["sad"]["run_s"] / out["best_of_k"]["run_s"], 3)
      out["sad_vs_best_of_k_analytic"] = round(sad.sad_cost(k, t, n), 3)
      out["best_of_k_vs_plain"] = round(out["best_of_k"]["run_s"] / out["plain"]["run_s"], 3)
  return out


def floor_report(out: dict, modes, shapes: str) -> None:
  """Prints (and records in `out`) each mode's matmul FLOPs, the rate achieved, and the
  GEMM floor: those FLOPs at the best matmul rate this machine reaches, measured now
  (benchmarks/gemm_rate.py), against the official median when it ran in this run."""
  from benchmarks import gemm_rate
  peak, _ = gemm_rate.peak_gflops()
  out["gemm_peak_gflops"] = round(peak, 1)
  for mode in modes:
    g = out["gflop"][mode]
    floor = g["total"] / peak
    line = (f"[{shapes}] {mode}: {g['total']:.1f} GFLOP of matmuls (encoder {g['encoder']:.1f}, "
            f"decoder {g['decoder']:.1f}, head {g['head']:.1f}), achieved "
            f"{g['total'] / out[mode]['run_s']:.1f} GFLOP/s; GEMM floor at this machine's "
            f"measured peak {peak:.1f} GFLOP/s: {floor:.3f} s")
    out[mode]["gemm_floor_s"] = round(floor, 3)
    if out[mode].get("official"):
      r = floor / out[mode]["official"]["median"]
      out[mode]["gemm_floor_vs_official"] = round(r, 3)
      line += f" = {r:.3f}x the official median"
    print(line, flush=True)
  if "sad" in modes and "plain" in modes:
    r = out["gflop"]["sad"]["total"] / out["gflop"]["plain"]["total"]
    out["sad_vs_plain_flops"] = round(r, 3)
    print(f"[{shapes}] SAD / plain matmul FLOPs: {r:.3f}x", flush=True)


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", choices=("anchor", "b16", "all"), default="anchor")
  p.add_argument("--modes", default="plain,sad,best_of_k")
  p.add_argument("--rounds", type=int, default=2, help="alternating rounds (each side per round)")
  p.add_argument("--reps", type=int, default=1, help="timed decodes per side per round")
  p.add_argument("--encoder_buckets", type=int, default=None)
  p.add_argument("--head_buckets", type=int, default=None)
  p.add_argument("--official", default="", help="local checkout of the official DREAM code")
  p.add_argument("--official_pythonpath", default="",
                 help="extra PYTHONPATH of the official subprocess (e.g. where timm is)")
  p.add_argument("--json", default="", help="also write the results to this file")
  a = p.parse_args(argv)
  modes = [m for m in a.modes.split(",") if m]
  shapes = ("anchor", "b16") if a.shapes == "all" else (a.shapes,)
  results = [bench(s, modes, a.rounds, a.reps, a.encoder_buckets, a.head_buckets, a.official,
                   a.official_pythonpath) for s in shapes]
  if a.json:
    with open(a.json, "w") as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == "__main__":
  main()
