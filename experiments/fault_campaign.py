"""Longer fault campaign: SIGKILL a tiny run (tests/fault_config.py) at N random moments in
run order (training steps, async checkpoint saves, after commits, evaluations, the final
samples), each rerun resuming the same workdir, then check it equals an uninterrupted run
(tests/fault_runner.campaign: bitwise final checkpoint, equal metrics rows, identical final
sample grid).

  python experiments/fault_campaign.py --kills=10 --steps=12 --seed=0 [--root=/tmp/faults]
"""
import argparse
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from tests.fault_runner import all_moments, campaign  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--kills", type=int, default=10)
  p.add_argument("--steps", type=int, default=12, help="even; checkpoints every 2 steps")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--root", default=None, help="workdirs go here (default: a temp dir)")
  a = p.parse_args(argv)
  pool = all_moments(a.steps)
  if a.kills > len(pool):
    raise SystemExit(f"--kills={a.kills}: a {a.steps}-step run has {len(pool)} moments")
  rng = random.Random(a.seed)
  moments = [pool[i] for i in sorted(rng.sample(range(len(pool)), a.kills))]
  root = a.root or tempfile.mkdtemp(prefix="fault_campaign_")
  print(f"moments: {moments}\nworkdirs: {root}", flush=True)
  campaign(root, moments, steps=a.steps)
  print("campaign passed", flush=True)


if __name__ == "__main__":
  main()
