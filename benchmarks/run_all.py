"""Every side-by-side benchmark at every shape: the train step, then sampling (plain, SAD).

  python benchmarks/run_all.py --official=/path/to/dream --official_pythonpath=/path/with/timm
  python benchmarks/run_all.py --shapes=anchor          # our numbers only, "no ratio measured"

Each benchmark runs in its own process (benchmarks/train_step.py, benchmarks/sampling.py),
one after the other, with the same --official arguments; B/16 is slow on a CPU (minutes per
step and per decode), so it runs last.
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def commands(shapes, official, extra, rounds):
  side = [f"--official={official}", f"--official_pythonpath={extra}"] if official else []
  out = []
  for s in (("anchor", "b16") if shapes == "all" else (shapes,)):
    out.append([sys.executable, os.path.join(HERE, "train_step.py"), f"--shapes={s}",
                f"--rounds={rounds}"] + side)
    out.append([sys.executable, os.path.join(HERE, "sampling.py"), f"--shapes={s}",
                f"--rounds={rounds}", "--modes=plain,sad"] + side)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default="all", choices=("anchor", "b16", "all"))
  p.add_argument("--official", default="")
  p.add_argument("--official_pythonpath", default="")
  p.add_argument("--rounds", type=int, default=3)
  a = p.parse_args(argv)
  for cmd in commands(a.shapes, a.official, a.official_pythonpath, a.rounds):
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
  main()
