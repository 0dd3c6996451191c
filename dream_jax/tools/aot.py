"""Ahead-of-time compile of the train step (or a sampling program) for a real Cloud TPU
slice, on any host.

  pip install -r requirements-tpu.txt      # jax[tpu]: libtpu provides the TPU compiler
  python -m dream_jax.tools.aot --config=configs/dream_b16.py --topology=v5:4x4x2 \
      [--batch=2048] [--remat=none|dots|full] [--scan|--noscan] [--fsdp=-1] \
      [--inputs=cache|raw] [--dump_hlo=DIR] [--json=FILE] \
      [--what=train|sample [--mode=plain|sad|best_of_k] [--prompts=N]]

Builds the same `Trainer` a run builds, on the compile-only devices of the topology
(`jax.experimental.topologies`), so nothing is allocated: the state, frozen params and batch
are ShapeDtypeStructs with shardings, `train_step.trace(...).lower().compile()` runs the
real XLA:TPU pipeline. Prints, per chip: compile time, memory (arguments, outputs, temps,
peak), XLA FLOPs and bytes accessed (`cost_analysis`), the analytic FLOPs of the model
(`analytic_flops`), collectives by kind in the optimized HLO, and one JSON line.

FLOP accounting. Two data-dependent sizes are static buckets (models/api.py): the encoder's
visible count and the diffusion head's masked rows. XLA's cost analysis of a `lax.switch`
counts its most expensive branch, i.e. the top bucket = no token dropped and every token in
the head, and counts a while-loop body ONCE. So XLA's FLOPs of the step are taken from the
lowered module with every layer stack unrolled (`unrolled_flops`: HloCostAnalysis on the host,
no compile; the compiled program's own count also misses the optimiser's loops, e.g. TPU
collective matmuls, and is printed with that caveat). They are checked against
`analytic_flops` at the top bucket plus what the remat policy recomputes ('executed'); the
same formula at the expected sizes of a training step (`--ratio`, the mean mask ratio;
'useful') gives the useful work, and the bucket choice decides where between the two a real
step lands (bucketing waste, reported apart).

Where the compile time goes, fusion by fusion: run this tool with
LIBTPU_INIT_ARGS=--vmodule=lowering_emitter=2, then `python -m dream_jax.tools.compile_log
/tmp/tpu_logs/tpu_driver.INFO`.

Inputs: '--inputs=cache' (default) feeds what `dream_jax.data.cache` writes (VAE latent
moments, frozen T5 features), as large runs do; 'raw' feeds 256px images and T5 ids, so the
frozen VAE encoder and T5 run inside the step (their FLOPs are not in the analytic count).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import re
import resource
import sys
import time

import jax
import numpy as np

# Published peak bf16 dense TFLOP/s per chip (Google Cloud TPU system architecture pages).
PEAK_TFLOPS = {"v4": 275.0, "v5": 459.0, "v5p": 459.0, "v5e": 197.0, "v6e": 918.0}
HBM_GIB = {"v4": 32.0, "v5": 95.0, "v5p": 95.0, "v5e": 16.0, "v6e": 32.0}


def topology_devices(name: str, chip_config: str = "megacore",
                     chips_per_host=(2, 2, 1)) -> list:
  """Compile-only devices of a TPU slice, e.g. 'v5:4x4x2' (32 v5p chips). Needs libtpu."""
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                      chip_config_name=chip_config,
                                      chips_per_host_bounds=tuple(chips_per_host),
                                      num_slices=1)
  return list(topo.devices)


# ---------------------------------------------------------------------------- FLOPs
def block_flops(tokens, width, mlp, ctx=0, ctx_width=0, part="all"):
  """Forward matmul FLOPs of one pre-norm block on `tokens` rows (+ cross-attn to ctx).

  part: 'all', or 'attention' (only the batched q.k / p.v products: what the 'dots' remat
  policy, which saves matmuls without batch dimensions, recomputes)."""
  attn = 4 * tokens * tokens * width                          # q.k and p.v
  if ctx:
    attn += 4 * tokens * ctx * width
  if part == "attention":
    return attn
  f = 2 * tokens * (4 * width * width + 2 * width * mlp)      # qkv, proj, fc1, fc2
  if ctx:
    f += 2 * tokens * 2 * width * width                       # q, proj
    f += 2 * ctx * 2 * ctx_width * width                      # kv of the context
  return f + attn


def head_eval_flops(token_dim, width, depth):
  """Forward matmul FLOPs of one diffusion-head evaluation of one row, without its condition
  and time embeddings (which callers count per row or per diffusion step)."""
  f = 2 * token_dim * width                                   # input projection
  f += depth * 2 * (3 * width * width + 2 * width * width)    # adaLN + MLP per block
  return f + 2 * (2 * width * width + width * 2 * token_dim)  # final adaLN + output


def _forward_per_sample(config, enc_tokens: int, head_rows: float, part: str = "all"):
  """(block-stack FLOPs, other FLOPs) of one sample's forward; the block stacks (encoder,
  CLIP text tower, aligner, decoder) are what `model.remat` recomputes."""
  from dream_jax.models.patchify import token_layout
  m, t, d = config.model, config.text, token_layout(config.tokenizer, config.data.image_size)
  l, c = d["seq_len"], d["token_dim"]
  mlp = m.mlp_dim or int(m.width * m.mlp_ratio)
  dmlp = m.mlp_dim or int(m.dec_width * m.mlp_ratio)
  s = m.buffer_size + l
  lc = t.cond_len if t.cond_encoder in ("t5", "minilm") else t.context_length
  dc = t.cond_dim if t.cond_encoder in ("t5", "minilm") else t.width
  blocks = m.depth * block_flops(m.buffer_size + enc_tokens, m.width, mlp, part=part)
  blocks += t.layers * block_flops(t.context_length, t.width, int(t.width * t.mlp_ratio),
                                   part=part)
  blocks += m.aligner_depth * block_flops(lc, m.dec_width, dmlp, part=part)
  blocks += m.dec_depth * block_flops(s, m.dec_width, dmlp, ctx=lc, ctx_width=m.dec_width,
                                      part=part)
  f = 2 * l * c * m.width                                       # z_proj (all tokens)
  ph = m.proj_hidden
  f += 2 * (m.width * ph + ph * ph + ph * m.embed_dim)          # projection MLP
  f += 2 * t.width * m.embed_dim
  f += 2 * lc * dc * m.dec_width                                # aligner input projection
  f += 2 * s * m.width * m.dec_width                            # decoder_embed
  w = m.diff_width
  head = head_eval_flops(c, w, m.diff_depth)
  head += 2 * (256 * w + w * w + m.dec_width * w)               # time and cond embeds
  f += head_rows * head
  # Contrastive logits [B, B], per sample: one row of each direction's matmul.
  f += 2 * config.batch_size * m.embed_dim
  return blocks, f


def analytic_flops(config, enc_tokens: int, head_rows: float) -> float:
  """Forward + backward (3x forward) matmul FLOPs of one train step, all chips.

  enc_tokens: image tokens the encoder runs per sample (top bucket: seq_len).
  head_rows: diffusion-head rows per sample (masked tokens x diffusion_batch_mul).
  The frozen VAE / T5 are not counted (cached inputs).
  """
  blocks, other = _forward_per_sample(config, enc_tokens, head_rows)
  return 3.0 * config.batch_size * (blocks + other)


def remat_flops(config, enc_tokens: int) -> float:
  """Matmul FLOPs the backward pass recomputes under `model.remat` (all chips): 'full'
  reruns every block's forward, 'dots' only the attention products, 'none' nothing."""
  from dream_jax.models.layers import remat_policy_name
  policy = remat_policy_name(config.model.remat)
  if policy == "none":
    return 0.0
  part = "all" if policy == "full" else "attention"
  return float(config.batch_size) * _forward_per_sample(config, enc_tokens, 0, part)[0]


def flop_report(config, ratio: float) -> dict:
  from dream_jax.models.patchify import token_layout
  l = token_layout(config.tokenizer, config.data.image_size)["seq_len"]
  mul = config.model.diffusion_batch_mul
  masked = math.ceil(l * ratio)
  top = analytic_flops(config, l, l * mul)
  useful = analytic_flops(config, l - masked, masked * mul)
  return dict(analytic_compiled=top, analytic_useful=useful, ratio=ratio,
              bucket_waste=top / useful - 1.0,
              analytic_executed=top + remat_flops(config, l))


# -------------------------------------------------------------------- collectives
_COLLECTIVE = re.compile(r"\b(all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute|collective-broadcast|ragged-all-to-all)"
                         r"(-start)?\(")
_FUSION_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*\bfusion\(")
_ASYNC_CC = re.compile(r'custom_call_target="(AsyncCollective\w*)"')


def count_collectives(hlo_text: str) -> dict:
  """{kind: count} of the collectives in an optimized HLO module text.

  Async pairs count once (the '-start' op); TPU's reduce-scatters are fusions named
  'all-reduce-scatter*' / 'reduce-scatter*'; AsyncCollectiveStart custom calls are counted
  by target. Ops inside fusions and called computations are all counted (every line).
  """
  counts = collections.Counter()
  for line in hlo_text.splitlines():
    if "-done(" in line:
      continue
    fm = _FUSION_NAME.match(line)
    if fm and re.match(r"(all-reduce-scatter|reduce-scatter)", fm.group(1)):
      counts["reduce-scatter (fusion)"] += 1
      continue
    cm = _ASYNC_CC.search(line)
    if cm:
      counts[cm.group(1)] += 1
      continue
    m = _COLLECTIVE.search(line)
    if m and "=" in line.split(m.group(0))[0]:
      counts[m.group(1)] += 1
  return dict(sorted(counts.items()))


# ----------------------------------------------------------------------- inputs
def abstract_batch(config, mesh, inputs: str) -> dict:
  """ShapeDtypeStructs of one global training batch (data/__init__.py), batch-sharded."""
  from dream_jax.models.patchify import token_layout
  from dream_jax.train import sharding
  b, t = config.batch_size, config.text
  d = token_layout(config.tokenizer, config.data.image_size)
  sh = sharding.batch_sharding(mesh)
  s = lambda shape, dt: jax.ShapeDtypeStruct((b,) + tuple(shape), np.dtype(dt), sharding=sh)
  batch = dict(clip_ids=s((t.context_length,), "int32"))
  raw = inputs == "raw"
  if config.tokenizer.kind == "vae" and not raw:
    ls, ch = d["latent_size"], d["channels"]
    batch["latent_moments"] = s((2, ls, ls, ch), "float32")
  else:
    size = config.data.image_size
    batch["image"] = s((size, size, 3), "float32")
  if t.cond_encoder in ("t5", "minilm"):
    if raw:
      batch["cond_ids"] = s((t.cond_len,), "int32")
    else:
      batch["cond_embeddings"] = s((t.cond_len, t.cond_dim), "float32")
    batch["cond_mask"] = s((t.cond_len,), "bool")
  elif t.cond_encoder == "small":
    batch["cond_ids"] = s((t.context_length,), "int32")
    batch["cond_mask"] = s((t.context_length,), "bool")
  return batch


@contextlib.contextmanager
def stand_in_tokenizers(config):
  """Without T5/MiniLM tokenizer files the empty caption (CFG's unconditional input) is
  tokenized by the byte stand-in: same `cond_len`, so the same shapes, which is all a
  compile needs. The encoder architecture is unchanged (T5-Large without a config.json)."""
  from dream_jax.pretrained import frozen, t5
  path = config.text.get("t5_path", "") if config.text.cond_encoder == "t5" else "x"
  if path:
    yield
    return
  orig = frozen.FrozenTextEncoder.tokenizer
  stand_in = property(lambda self: t5.T5Tokenizer.bytes(self.cond_len))
  frozen.FrozenTextEncoder.tokenizer = stand_in
  try:
    yield
  finally:
    frozen.FrozenTextEncoder.tokenizer = orig


# ------------------------------------------------------------------------- main
def configure(config, args, num_devices: int):
  """Applies the command-line overrides to the config (unlocked copy)."""
  config = config.copy_and_resolve_references()
  if args.batch:
    config.batch_size = args.batch
  if args.remat is not None:
    config.model.remat = args.remat
  if args.scan is not None:
    config.model.scan_layers = args.scan
  fsdp = num_devices if args.fsdp == -1 else args.fsdp
  config.mesh.fsdp = fsdp
  config.mesh.data = num_devices // fsdp
  for item in args.set or ():
    key, _, value = item.partition("=")
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(json.loads(value)) if node[leaf] is not None else (
        json.loads(value))
  return config


def lower_train(config, devices, inputs: str = "cache"):
  """(lowered train step, trainer): traced and lowered on `devices`, not compiled."""
  from dream_jax.train.trainer import Trainer
  with stand_in_tokenizers(config):
    tr = Trainer(config, devices=devices)
  batch = abstract_batch(config, tr.mesh, inputs)
  with jax.set_mesh(tr.mesh):
    return tr.train_step.trace(tr.abstract_state(), tr.frozen, batch).lower(), tr


def hlo_flops(lowered) -> float:
  """XLA's HloCostAnalysis FLOPs of a lowered (unoptimised, unpartitioned: global) module,
  run by the host CPU client, so no compile is needed. Like `cost_analysis()` of a compiled
  program it counts a while-loop body once and a conditional's most expensive branch."""
  from jax._src.lib import xla_client as xc
  module = lowered.compiler_ir("hlo").get_hlo_module()
  cost = xc._xla.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
  return float(cost.get("flops", float("nan")))


def unrolled_flops(config, devices, inputs: str = "cache") -> float:
  """Global FLOPs of the same train step with every layer stack unrolled (`scan_layers`
  off, same remat): XLA's count of the whole step, which it cannot give for the scanned
  program (loop bodies count once). Lowering only: seconds, no compile."""
  c = config.copy_and_resolve_references()
  c.model.scan_layers = False
  return hlo_flops(lower_train(c, devices, inputs)[0])


def compile_train(config, devices, inputs: str = "cache"):
  """(compiled, trainer, seconds) of the train step on `devices` (compile-only or real)."""
  cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
  t0 = time.perf_counter()
  lowered, tr = lower_train(config, devices, inputs)
  t1, c1 = time.perf_counter(), cpu()
  with jax.set_mesh(tr.mesh):
    compiled = lowered.compile()
  t2, c2 = time.perf_counter(), cpu()
  # CPU seconds as well as wall time: on a shared host the wall time depends on the load.
  return compiled, tr, dict(lower_s=t1 - t0, compile_s=t2 - t1, compile_cpu_s=c2 - c1)


def abstract_prompts(config, mesh, num_prompts: int) -> dict:
  """ShapeDtypeStructs of the sampler's tokenized prompts (`Components.tokenize`): the text
  ids the program encodes itself (frozen T5 / MiniLM run inside it), batch-sharded."""
  from dream_jax.train import sharding
  t = config.text
  sh = sharding.batch_sharding(mesh)
  s = lambda n, dt: jax.ShapeDtypeStruct((num_prompts, n), np.dtype(dt), sharding=sh)
  batch = dict(clip_ids=s(t.context_length, "int32"))
  if t.cond_encoder in ("t5", "minilm"):
    batch.update(cond_ids=s(t.cond_len, "int32"), cond_mask=s(t.cond_len, "bool"))
  elif t.cond_encoder == "small":
    batch.update(cond_ids=s(t.context_length, "int32"), cond_mask=s(t.context_length, "bool"))
  return batch


def compile_sample(config, devices, *, mode: str = "plain", num_prompts: int = 0):
  """(compiled, trainer, seconds) of one sampling program (`mode` 'plain' | 'sad' |
  'best_of_k', the `Sampler`'s own jitted decode) for `num_prompts` prompts (0: one per
  chip), with the EMA parameters in the training state's sharding (FSDP), as a run's
  in-training sampler sees them. Options come from config.sampling."""
  from dream_jax.train import sharding
  from dream_jax.train.trainer import Trainer
  cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
  t0 = time.perf_counter()
  with stand_in_tokenizers(config):
    tr = Trainer(config, devices=devices)
  sampler = tr.components.sampler()
  opts = sampler.options({})
  static = {}
  if mode == "sad":
    static = dict(num_candidates=sampler.num_candidates({}), sad_step=sampler.sad_step(opts, {}),
                  critic="final", return_candidates=False)
  elif mode == "best_of_k":
    static = dict(num_candidates=sampler.num_candidates({}), decode_all=False)
  program = sampler.program(mode, opts, **static)
  state = tr.abstract_state()
  variables = dict(params=state["ema_params"], batch_stats=state["batch_stats"])
  rep = sharding.replicated(tr.mesh)
  uncond = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                        sampler.conditioning.empty)
  scalar = jax.ShapeDtypeStruct((), np.float32, sharding=rep)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
  prompts = abstract_prompts(config, tr.mesh, num_prompts or len(devices))
  with jax.set_mesh(tr.mesh):
    lowered = program.trace(variables, tr.frozen, prompts, uncond, rng, scalar, scalar).lower()
    t1, c1 = time.perf_counter(), cpu()
    compiled = lowered.compile()
  t2, c2 = time.perf_counter(), cpu()
  return compiled, tr, dict(lower_s=t1 - t0, compile_s=t2 - t1, compile_cpu_s=c2 - c1)


def report(config, compiled, times: dict, *, topology: str, num_devices: int,
           ratio: float, dump_hlo: str | None = None, what: str = "train") -> dict:
  mem = compiled.memory_analysis()
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  ca = ca or {}
  hlo = compiled.as_text()
  if dump_hlo:
    os.makedirs(dump_hlo, exist_ok=True)
    with open(os.path.join(dump_hlo, f"{what}.optimized.hlo"), "w") as f:
      f.write(hlo)
  gib = 2.0 ** 30
  xla_total = float(ca.get("flops", float("nan"))) * num_devices   # cost_analysis is per chip
  chip = topology.split(":")[0]
  peak = PEAK_TFLOPS.get(chip, float("nan")) * 1e12
  m = config.model
  row = dict(
      what=what, config=f"{m.size}", topology=topology, chips=num_devices,
      batch=config.batch_size,
      mesh=f"data={config.mesh.data} x fsdp={config.mesh.fsdp}",
      remat=str(m.remat), scan=bool(m.get("scan_layers", False)),
      compute_dtype=config.compute_dtype,
      lower_s=round(times["lower_s"], 1), compile_s=round(times["compile_s"], 1),
      compile_cpu_s=round(times["compile_cpu_s"], 1),
      argument_gib=mem.argument_size_in_bytes / gib, output_gib=mem.output_size_in_bytes / gib,
      alias_gib=mem.alias_size_in_bytes / gib, temp_gib=mem.temp_size_in_bytes / gib,
      peak_gib=getattr(mem, "peak_memory_in_bytes", float("nan")) / gib,
      hbm_gib=HBM_GIB.get(chip, float("nan")), xla_tflop=xla_total / 1e12,
      bytes_accessed_gib=float(ca.get("bytes accessed", float("nan"))) / gib,
      collectives=count_collectives(hlo))
  if what != "train":
    # A decoding program is a fori_loop: XLA's cost analysis counts a loop body once, so
    # its FLOPs are those of one decoding step plus the prologue, not of the whole loop.
    return row
  flops = flop_report(config, ratio)
  if "unrolled_flops" in times:
    row["xla_unrolled_tflop"] = times["unrolled_flops"] / 1e12
    row["xla_unrolled_over_executed"] = times["unrolled_flops"] / flops["analytic_executed"] - 1
  row.update(analytic_compiled_tflop=flops["analytic_compiled"] / 1e12,
             analytic_executed_tflop=flops["analytic_executed"] / 1e12,
             analytic_useful_tflop=flops["analytic_useful"] / 1e12, useful_ratio=ratio,
             xla_over_analytic=xla_total / flops["analytic_compiled"] - 1.0,
             xla_over_executed=xla_total / flops["analytic_executed"] - 1.0,
             bucket_waste=flops["bucket_waste"])
  for mfu in (0.4, 0.6):
    step = flops["analytic_useful"] / (num_devices * peak * mfu)
    row[f"step_s_at_{int(mfu * 100)}mfu"] = step
  return row


def print_report(row: dict) -> None:
  what = "train step" if row["what"] == "train" else f"sampling ({row['what']})"
  print(f"DREAM-{row['config']} {what} on {row['topology']} ({row['chips']} chips), global "
        f"batch {row['batch']}, {row['mesh']}, remat={row['remat']} scan={row['scan']} "
        f"{row['compute_dtype']}")
  print(f"  trace+lower {row['lower_s']:.1f} s, compile {row['compile_s']:.1f} s wall, "
        f"{row['compile_cpu_s']:.1f} s CPU")
  print(f"  per chip: arguments {row['argument_gib']:.2f} GiB, outputs {row['output_gib']:.2f},"
        f" aliased {row['alias_gib']:.2f}, temps {row['temp_gib']:.2f}, PEAK "
        f"{row['peak_gib']:.2f} GiB (HBM {row['hbm_gib']:.0f} GiB)")
  if row["what"] != "train":
    print(f"  XLA FLOPs of one decoding step + prologue (all chips; loop bodies count once): "
          f"{row['xla_tflop']:.2f} TFLOP; bytes accessed per chip "
          f"{row['bytes_accessed_gib']:.1f} GiB")
    print("  collectives: " + ", ".join(f"{k} {v}" for k, v in row["collectives"].items()))
    print("JSON " + json.dumps(row, sort_keys=True))
    return
  note = (" [XLA counts each while-loop body once: the optimiser's own loops (collective"
          " matmuls) and, with scanned layers, the layer loops make this an undercount; see"
          " the unrolled count below]")
  print(f"  FLOPs/step (all chips): XLA {row['xla_tflop']:.1f} TFLOP vs analytic "
        f"{row['analytic_compiled_tflop']:.1f} at the top bucket "
        f"({100 * row['xla_over_analytic']:+.1f}%), "
        f"{row['analytic_executed_tflop']:.1f} with remat={row['remat']}'s recompute "
        f"({100 * row['xla_over_executed']:+.1f}%){note}; useful at mask ratio "
        f"{row['useful_ratio']}: {row['analytic_useful_tflop']:.1f} TFLOP (top bucket "
        f"{100 * row['bucket_waste']:+.1f}% over it)")
  if "xla_unrolled_tflop" in row:
    print(f"  XLA FLOPs of the same step with the layers unrolled (HloCostAnalysis of the "
          f"lowered module): {row['xla_unrolled_tflop']:.1f} TFLOP, "
          f"{100 * row['xla_unrolled_over_executed']:+.1f}% vs analytic with remat")
  print(f"  bytes accessed per chip {row['bytes_accessed_gib']:.1f} GiB; step time at "
        f"40%/60% MFU {row['step_s_at_40mfu']:.3f} / {row['step_s_at_60mfu']:.3f} s")
  print("  collectives: " + ", ".join(f"{k} {v}" for k, v in row["collectives"].items()))
  print("JSON " + json.dumps(row, sort_keys=True))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="config file[:args]")
  p.add_argument("--topology", default="v5:4x4x2")
  p.add_argument("--chip_config", default="megacore")
  p.add_argument("--chips_per_host", default="2,2,1")
  p.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  p.add_argument("--what", default="train", choices=("train", "sample"),
                 help="the train step, or the sampler's decoding program (--mode)")
  p.add_argument("--mode", default="plain", choices=("plain", "sad", "best_of_k"),
                 help="with --what=sample: which decoding program")
  p.add_argument("--prompts", type=int, default=0,
                 help="with --what=sample: prompts per program (0: one per chip)")
  p.add_argument("--remat", default=None, choices=("none", "dots", "full"))
  p.add_argument("--scan", dest="scan", action="store_true", default=None)
  p.add_argument("--noscan", dest="scan", action="store_false")
  p.add_argument("--fsdp", type=int, default=-1, help="fsdp axis size (-1: all chips)")
  p.add_argument("--inputs", default="cache", choices=("cache", "raw"))
  p.add_argument("--ratio", type=float, default=0.5,
                 help="mean mask ratio for the useful-FLOPs count")
  p.add_argument("--set", action="append", help="config override key=json_value")
  p.add_argument("--dump_hlo", default=None)
  p.add_argument("--json", default=None, help="append the JSON row to this file")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from configs.common import load_config_file
  devices = topology_devices(args.topology, args.chip_config,
                             [int(x) for x in args.chips_per_host.split(",")])
  config = configure(load_config_file(args.config), args, len(devices))
  what = "train" if args.what == "train" else args.mode
  t0 = time.perf_counter()
  try:
    if args.what == "train":
      compiled, _, times = compile_train(config, devices, args.inputs)
      times["unrolled_flops"] = unrolled_flops(config, devices, args.inputs)
    else:
      compiled, _, times = compile_sample(config, devices, mode=args.mode,
                                          num_prompts=args.prompts)
  except jax.errors.JaxRuntimeError as e:
    # XLA:TPU refuses a program that does not fit the chip's HBM at compile time; that is a
    # result (say so, with XLA's own numbers), not a crash.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    row = dict(what=what, config=config.model.size, topology=args.topology,
               chips=len(devices), batch=config.batch_size, remat=str(config.model.remat),
               scan=bool(config.model.scan_layers), fits=False,
               compile_s=round(time.perf_counter() - t0, 1), error=str(e).strip()[:2000])
    print(f"DREAM-{row['config']} {what} on {args.topology}, batch {row['batch']}, remat="
          f"{row['remat']} scan={row['scan']}: DOES NOT FIT ({row['compile_s']} s)\n"
          f"  {row['error'][:600]}")
  else:
    row = report(config, compiled, times, topology=args.topology, num_devices=len(devices),
                 ratio=args.ratio, dump_hlo=args.dump_hlo, what=what)
    row["fits"] = True
    if args.what != "train":
      row["batch"] = args.prompts or len(devices)
    print_report(row)
  if args.json:
    with open(args.json, "a") as f:
      f.write(json.dumps(row, sort_keys=True) + "\n")
  return row


def cli() -> None:
  """Console script `dream-aot` (pip install .[tpu]); exit status 2 when it does not fit."""
  if not main()["fits"]:
    sys.exit(2)


if __name__ == "__main__":
  cli()
