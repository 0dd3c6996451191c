"""Executes notebooks headless (nbclient) and fails on the first cell error.

  DREAM_SMOKE=1 python notebooks/run.py notebooks/*.ipynb          # CI: every step shrunk
  python notebooks/run.py notebooks/quickstart.ipynb --out=DIR       # full run, executed copy

Each notebook runs in a fresh kernel from the repository root; its wall time is printed.
`--out` keeps the executed copies (with outputs); the committed notebooks stay cleared.
The kernels and the training they start share a persistent XLA compilation cache
(JAX_COMPILATION_CACHE_DIR, default .jax_cache/notebooks), so a program compiled by one
notebook is not compiled again by the next.
"""
import argparse
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("notebooks", nargs="+")
  p.add_argument("--out", default=None, help="folder for the executed copies")
  p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
  args = p.parse_args(argv)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache", "notebooks"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  failed = []
  for path in args.notebooks:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}})
    try:
      client.execute()
      status = "ok"
    except CellExecutionError as e:
      status = "FAILED"
      failed.append(path)
      print(str(e)[-3000:], file=sys.stderr)
    print(f"{status:6s} {path}  {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
      os.makedirs(args.out, exist_ok=True)
      nbformat.write(nb, os.path.join(args.out, os.path.basename(path)))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
