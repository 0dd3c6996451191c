"""Where an XLA:TPU compile spends its time, fusion by fusion, from libtpu's own log.

  LIBTPU_INIT_ARGS=--vmodule=lowering_emitter=2 python -m dream_jax.tools.aot ...
  python -m dream_jax.tools.compile_log /tmp/tpu_logs/tpu_driver.INFO [--top=30]

libtpu's backend stage lowers every fusion of the optimized HLO to machine code
(`LoweringEmitter::AddWorkUnit`: scheduling and register allocation per fusion); at B/16
widths that stage is most of the compile (docs/scaling.md). With the vmodule flag above the
INFO log brackets each fusion's lowering with "Started lowering NAME" / "Finished lowering
NAME" lines (timestamped, per thread), reports its op_name metadata, and logs one
SEQUENTIAL_TRY_START per attempt (an attempt that does not fit is retried). This tool sums
the bracketed time per fusion and prints the slowest fusions and a breakdown by part of the
model (the `DREAM.<method>` and `lax.switch` branch in the op_name; whether the fusion sits
inside a scanned layer body). Times are CPU seconds of the lowering threads, so their sum
exceeds the stage's wall time when libtpu lowers in parallel.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import sys

_LINE = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+)\s+(\d+) lowering_emitter\.cc:\d+\] (.*)$")
_REPORT = re.compile(r"reporting instr:%(\S+) = (.*?) fusion\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass
class Fusion:
  name: str
  seconds: float = 0.0       # summed Started -> Finished time over its attempts
  attempts: int = 0          # SEQUENTIAL_TRY_START lines (1 = no retry)
  shape: str = ""
  op_name: str = ""


def parse(lines) -> dict[str, Fusion]:
  """{fusion name: Fusion} from the lines of a libtpu INFO log (see the module docstring)."""
  fusions: dict[str, Fusion] = {}
  open_at: dict[tuple[str, str], float] = {}

  def get(name):
    return fusions.setdefault(name, Fusion(name))

  for line in lines:
    if "lowering_emitter" not in line:
      continue
    m = _LINE.match(line.rstrip("\n"))
    if not m:
      continue
    h, mi, s, thread, msg = m.groups()
    t = int(h) * 3600 + int(mi) * 60 + float(s)
    if msg.startswith("Started lowering "):
      open_at[(thread, msg.split()[2])] = t
    elif msg.startswith("Finished lowering "):
      name = msg.split()[2]
      t0 = open_at.pop((thread, name), None)
      if t0 is not None:
        get(name).seconds += (t - t0) % 86400.0     # a compile that runs past midnight
    elif msg.startswith("SEQUENTIAL_TRY_START"):
      g = re.search(r"hlo=(\S+)", msg)
      if g:
        get(g.group(1)).attempts += 1
    elif "reporting instr:%" in msg:
      g = _REPORT.search(msg)
      if g:
        f = get(g.group(1))
        f.shape = g.group(2)
        op = _OP_NAME.search(msg)
        f.op_name = op.group(1) if op else ""
  if not fusions:
    raise ValueError("no 'lowering_emitter' lines with fusion timings in this log: was the "
                     "compile run with LIBTPU_INIT_ARGS=--vmodule=lowering_emitter=2?")
  return fusions


def part(f: Fusion) -> str:
  """The part of the model a fusion belongs to, from its op_name: 'DREAM.encode branch_2',
  'DREAM.decode', ...; 'optimizer / outside the model' when no DREAM method is named, and
  'no op_name' for copies, sorts, scatters and collectives XLA created without one."""
  if not f.op_name:
    return "no op_name"
  m = re.search(r"(branch_\d+)_fun/(DREAM\.\w+)", f.op_name)
  if m:
    return f"{m.group(2)} {m.group(1)}"
  m = re.search(r"(DREAM\.\w+)", f.op_name)
  return m.group(1) if m else "optimizer / outside the model"


def report(fusions: dict[str, Fusion], top: int = 30, out=sys.stdout) -> None:
  fs = sorted(fusions.values(), key=lambda f: -f.seconds)
  total = sum(f.seconds for f in fs)
  retried = [f for f in fs if f.attempts > 1]
  print(f"{len(fs)} fusions lowered in {total:.1f} s (lowering threads' time); "
        f"{len(retried)} retried, {sum(f.seconds for f in retried):.1f} s of it", file=out)
  print(f"\nslowest {min(top, len(fs))}:", file=out)
  for f in fs[:top]:
    print(f"  {f.seconds:7.2f} s  x{f.attempts}  {f.name:32s} {f.shape[:48]:48s} "
          f"{f.op_name[-110:]}", file=out)
  by_part = collections.defaultdict(lambda: [0.0, 0])
  in_body = [0.0, 0]
  for f in fs:
    by_part[part(f)][0] += f.seconds
    by_part[part(f)][1] += 1
    if "/while/body/" in f.op_name:
      in_body[0] += f.seconds
      in_body[1] += 1
  print("\nby part of the model:", file=out)
  for name, (sec, n) in sorted(by_part.items(), key=lambda kv: -kv[1][0]):
    print(f"  {sec:8.1f} s  {100 * sec / total:5.1f}%  {n:5d} fusions  {name}", file=out)
  print(f"\ninside scanned layer bodies (op_name '/while/body/'): {in_body[0]:.1f} s "
        f"({100 * in_body[0] / total:.1f}%) in {in_body[1]} fusions", file=out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("log", help="libtpu INFO log, e.g. /tmp/tpu_logs/tpu_driver.INFO")
  p.add_argument("--top", type=int, default=30)
  a = p.parse_args(argv)
  with open(a.log, errors="replace") as fh:
    report(parse(fh), a.top)
  return 0


if __name__ == "__main__":
  sys.exit(main())
