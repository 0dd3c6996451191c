"""Multi-process training on loopback: 2 processes x 4 CPU devices (jax.distributed with a
coordinator on 127.0.0.1, gloo CPU collectives) against 1 process x 8 devices, same mesh
(data=4 x fsdp=2) and global batch: same losses and params after 2 steps; a checkpoint written
by 2 processes restores in 1 and one written by 1 restores in 2 (the next step agrees); each
process's pipeline reads disjoint examples. Workers: tests/multiprocess_worker.py."""
import os
import socket
import subprocess
import sys

import numpy as np

from dream_jax.data import make_dataset
from tests.helpers import train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(nproc, ckpt_in, ckpt_out, out):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)          # the worker sets its own device count
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  port = free_port()
  return [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_worker", str(i),
                            str(nproc), str(port), ckpt_in, ckpt_out, out], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(nproc)]


def wait(procs):
  try:
    for p in procs:
      log, _ = p.communicate(timeout=TIMEOUT_S)
      assert p.returncode == 0, log[-4000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def compare(a, b, what):
  """Same losses (fp32 reductions in another order: 2e-5) -- the sensitive check, as each
  step's loss depends on the previous updates -- and the same params: an Adam step moves a
  weight by ~lr * g / (|g| + eps), whose sign flips for gradients near zero (e.g. biases in
  front of LayerNorm/BatchNorm), so params agree to within 2 x the summed learning rates."""
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=2e-5, err_msg=what)
  assert a.keys() == b.keys()
  lr = float(np.sum(a["lrs"]))
  assert lr > 0
  for k in a:
    if k in ("losses", "lrs"):
      continue
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=2 * lr + 1e-7, err_msg=f"{what}: {k}")


def test_two_processes_match_one_and_share_checkpoints(tmp_path):
  t = lambda n: str(tmp_path / n)
  # Fresh runs: 1 x 8 and 2 x 4 devices, side by side.
  wait(start(1, "-", t("ck1"), t("r1.npz")) + start(2, "-", t("ck2"), t("r2.npz")))
  r1, r2 = load(t("r1.npz")), load(t("r2.npz"))
  assert r1["losses"].shape == (2,) and np.all(np.isfinite(r1["losses"]))
  compare(r1, r2, "2 steps, 2 processes vs 1")
  # Cross restores: 1 process from the 2-process checkpoint and vice versa, one more step.
  wait(start(1, t("ck2"), "-", t("r3.npz")) + start(2, t("ck1"), "-", t("r4.npz")))
  r3, r4 = load(t("r3.npz")), load(t("r4.npz"))
  compare(r3, r4, "step 3 after cross restore")
  assert not np.allclose(r3["losses"], r1["losses"][-1:])   # it trained from step 2 on


def test_each_process_reads_disjoint_examples():
  c = train_config()
  rows = []
  for i in range(2):
    b = next(make_dataset(c, "train", process_index=i, process_count=2).iterator())
    assert b["image"].shape[0] == c.batch_size // 2
    rows.append({np.asarray(x).tobytes() for x in b["image"]})
  assert len(rows[0]) == c.batch_size // 2 and not rows[0] & rows[1]
