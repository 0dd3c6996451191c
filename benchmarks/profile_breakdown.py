"""Where a compiled program's time goes on the CPU: GEMM vs elementwise vs copies vs runtime.

  python benchmarks/profile_breakdown.py --what=train --shapes=anchor [--steps=2]
  python benchmarks/profile_breakdown.py --what=plain --shapes=anchor
  python benchmarks/profile_breakdown.py --what=plain --shapes=b16 --steps=1 --decode_steps=8

Runs the benchmark's program (benchmarks/train_step.py or benchmarks/sampling.py) under
`jax.profiler.trace`, reads the trace back (jax's ProfileData) and adds up the time of every
XLA:CPU op event, classified with the optimised HLO (`compiled.as_text()`):
  gemm         dot / convolution ops and fusions that contain one
  elementwise  other fusions and elementwise / reduce ops
  copies       copy, transpose, concatenate, slice, pad, gather/scatter, dynamic-update-slice
  control      while / conditional / call (their bodies are counted in the other rows)
  other        anything else (custom calls, rng, sort, ...)
The wall time not covered by op events on the busiest thread is the runtime share (launch,
thread-pool hand-offs, Python). Prints the rows with seconds per step and % of the step,
and the 12 most expensive ops, and the op time by model part (encoder / decoder / diffusion
head / other, from the ops' JAX scope names in the HLO metadata).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_jax.utils import malloc, xla_cpu  # noqa: E402

if __name__ == "__main__":
  malloc.reexec_with_tuned_malloc()
  xla_cpu.use_default_flags()

import jax  # noqa: E402

COPY_OPS = {"copy", "transpose", "concatenate", "slice", "pad", "gather", "scatter",
            "dynamic-slice", "dynamic-update-slice", "broadcast", "reshape", "bitcast",
            "copy-start", "copy-done", "iota"}
CONTROL_OPS = {"while", "conditional", "call", "tuple", "get-tuple-element", "parameter",
               "constant", "after-all"}
GEMM_OPS = {"dot", "convolution"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?(%?[\w.\-]+)\s*=\s*[^=]*?\s([a-z][\w\-]*)\(")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?(%?[\w.\-]+)\s.*\{\s*$")


def classify_hlo(text: str) -> dict[str, str]:
  """instruction name -> class, from optimised HLO text (fusions by what they contain)."""
  comps, cur = collections.defaultdict(list), None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m and "=" not in line.split("{")[0]:
      cur = m.group(1).lstrip("%")
      continue
    m = _INSTR.match(line)
    if m and cur is not None:
      name, op = m.group(1).lstrip("%"), m.group(2)
      called = re.findall(r"calls=%?([\w.\-]+)", line)
      comps[cur].append((name, op, called))

  def has_dot(comp, seen=()):
    for _, op, called in comps.get(comp, ()):
      if op in GEMM_OPS or any(c not in seen and has_dot(c, seen + (comp,)) for c in called):
        return True
    return False

  def only_copies(comp):
    return all(op in COPY_OPS or op in ("parameter", "constant", "tuple", "get-tuple-element")
               for _, op, _ in comps.get(comp, ()))

  out = {}
  for comp, instrs in comps.items():
    for name, op, called in instrs:
      if op in GEMM_OPS:
        out[name] = "gemm"
      elif op == "fusion":
        if any(has_dot(c) for c in called):
          out[name] = "gemm"
        elif called and all(only_copies(c) for c in called):
          out[name] = "copies"
        else:
          out[name] = "elementwise"
      elif op in COPY_OPS:
        out[name] = "copies"
      elif op in CONTROL_OPS:
        out[name] = "control"
      elif op in ("custom-call", "rng", "rng-bit-generator", "sort", "all-reduce"):
        out[name] = "other"
      else:
        out[name] = "elementwise"
  return out


_OP_NAME = re.compile(r'metadata=\{[^}]*op_name="([^"]*)"')
PARTS = (("decoder", re.compile(r"DREAM\.decode")),
         ("encoder", re.compile(r"DREAM\.encode")),
         # the head's chain: its network and, inside the head-size switch, the chain's noise
         ("head", re.compile(r"DREAM\.diffusion_net|diffloss|cond/branch_\d+_fun/while")))


def parts_from_hlo(text: str) -> dict[str, str]:
  """instruction name -> model part (decoder | encoder | head | other) from the op_name
  metadata JAX writes into the optimised HLO (the Flax method scope of each op)."""
  out = {}
  for line in text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    op = _OP_NAME.search(line)
    name = op.group(1) if op else ""
    out[m.group(1).lstrip("%")] = next((p for p, rx in PARTS if rx.search(name)), "other")
  return out


def breakdown(trace_dir: str, classes: dict[str, str], steps: int, wall_s: float,
              parts: dict[str, str] | None = None) -> dict:
  from jax._src.lib import _profile_data
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  data = _profile_data.ProfileData.from_file(sorted(files)[-1])
  rows, per_op, by_part = collections.Counter(), collections.Counter(), collections.Counter()
  busiest = 0.0
  for plane in data.planes:
    for line in plane.lines:
      covered = 0.0
      for ev in line.events:
        name = ev.name.split(":")[0].strip().lstrip("%")
        cls = classes.get(name)
        if cls is None or cls == "control":
          continue
        d = ev.duration_ns * 1e-9
        rows[cls] += d
        per_op[name] += d
        by_part[(parts or {}).get(name, "other")] += d
        covered += d
      busiest = max(busiest, covered)
  total_ops = sum(rows.values())
  return dict(rows={k: v / steps for k, v in rows.items()}, ops_s=total_ops / steps,
              parts={k: v / steps for k, v in by_part.items()},
              wall_s=wall_s / steps, busiest_thread_s=busiest / steps,
              top=[(k, v / steps, classes.get(k)) for k, v in per_op.most_common(12)],
              by_class={c: [(k, v / steps) for k, v in per_op.most_common()
                            if classes.get(k) == c][:8] for c in ("elementwise", "copies")})


def program(what: str, shapes: str):
  """(run_once, compiled) of the benchmark's program."""
  if what == "train":
    from benchmarks import train_step
    run, info = train_step.prepare(shapes)
    return (lambda: run(1)), info["compiled"]
  from benchmarks import sampling
  return sampling.prepare_mode(shapes, what)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--what", default="train", choices=("train", "plain", "sad"))
  p.add_argument("--shapes", default="anchor", choices=("anchor", "b16", "demo"))
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--hlo_out", default="", help="also write the optimised HLO text here")
  p.add_argument("--decode_steps", type=int, default=0,
                 help="sampling only: decoding steps instead of the shapes' (a shorter B/16 decode)")
  p.add_argument("--diffusion_steps", default="",
                 help="sampling only: the head's respacing instead of the shapes' (e.g. 50)")
  a = p.parse_args(argv)
  if a.what != "train" and (a.decode_steps or a.diffusion_steps):
    from benchmarks import sampling
    s = sampling.SHAPES[a.shapes]
    s["steps"] = a.decode_steps or s["steps"]
    s["diffusion"] = a.diffusion_steps or s["diffusion"]
    s["t"] = min(s["t"], s["steps"])
  run, compiled = program(a.what, a.shapes)
  text = compiled.as_text()
  classes = classify_hlo(text)
  if a.hlo_out:
    with open(a.hlo_out, "w") as f:
      f.write(text)
  d = tempfile.mkdtemp(prefix="dream_profile_")
  with jax.profiler.trace(d):
    t0 = time.perf_counter()
    for _ in range(a.steps):
      run()
    wall = time.perf_counter() - t0
  b = breakdown(d, classes, a.steps, wall, parts_from_hlo(text))
  cores = os.cpu_count()
  print(f"[{a.shapes}] {a.what}: {b['wall_s']:.3f} s wall per step; op time summed over "
        f"threads {b['ops_s']:.3f} s ({cores} cores: {b['ops_s'] / (b['wall_s'] * cores):.0%}"
        f" of the core-seconds); busiest thread {b['busiest_thread_s']:.3f} s")
  for k in ("gemm", "elementwise", "copies", "other"):
    v = b["rows"].get(k, 0.0)
    print(f"  {k:12s} {v:8.3f} s  {v / max(b['ops_s'], 1e-9):6.1%} of op time")
  print(f"  {'runtime':12s} {max(b['wall_s'] * cores - b['ops_s'], 0):8.3f} core-s not in ops "
        f"(idle, hand-offs, Python)")
  print("  by model part (op time): " + "; ".join(
      f"{k} {b['parts'].get(k, 0.0):.3f} s ({b['parts'].get(k, 0.0) / max(b['ops_s'], 1e-9):.0%})"
      for k in ("encoder", "decoder", "head", "other")))
  print("  top ops: " + "; ".join(f"{n} {v * 1e3:.0f} ms ({c})" for n, v, c in b["top"]))
  for c, ops in b["by_class"].items():
    print(f"  top {c}: " + "; ".join(f"{n} {v * 1e3:.0f} ms" for n, v in ops))
  return b


if __name__ == "__main__":
  main()
