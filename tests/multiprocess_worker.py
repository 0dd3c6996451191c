"""One process of tests/test_multiprocess.py (not a test file itself).

  python -m tests.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT CKPT_IN CKPT_OUT OUT

Each of NUM_PROCESSES processes has 8 / NUM_PROCESSES CPU devices (all processes together
one 8-device mesh, data=4 x fsdp=2). It builds the tiny train config's Trainer, takes the
fixed global batch (the 1-process pipeline's first batch; each process feeds only its own
rows), then:
  * CKPT_IN '-': fresh state, 2 train steps, checkpoint step 2 to CKPT_OUT;
  * CKPT_IN a directory: restore its step 2 (written by any process count), 1 more step.
Process 0 writes the losses and the final params (gathered from every process) to OUT.npz.
"""
import os
import sys

pid, nproc, port = (int(x) for x in sys.argv[1:4])
ckpt_in, ckpt_out, out = sys.argv[4:7]
# LLVM at -O0: the compiles are most of this test's time on CI's 2 cores (3 processes each
# compile the step: ~120 s at the default level, ~45 s at 0); every process uses the same
# flags, so the 1- and 2-process runs still execute the same program.
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={8 // nproc} "
                           "--xla_backend_optimization_level=0")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
# The tests' persistent compile cache (tests/conftest.py): reruns skip the compiles.
jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.environ.get(
    "DREAM_JAX_TEST_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_default_matmul_precision", "highest")
if nproc > 1:
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
                             initialization_timeout=60)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from dream_jax.data import make_dataset  # noqa: E402
from dream_jax.train import checkpoint as ckpt_lib  # noqa: E402
from dream_jax.train import sharding  # noqa: E402
from dream_jax.train.trainer import Trainer  # noqa: E402
from tests.helpers import train_config  # noqa: E402


def barrier(name: str) -> None:
  """All processes wait here (coordination service, 5 min). Gloo builds its context at the
  first collective with a 30 s deadline, so the processes must reach it together even when
  one compiled much slower (loaded CI hosts)."""
  if nproc > 1:
    from jax._src import distributed
    distributed.global_state.client.wait_at_barrier(name, 300_000)


def main():
  config = train_config()
  config.mesh.update(data=4, fsdp=2)
  # One static bucket per switch: the test is about processes, not buckets, and every
  # lax.switch branch is compiled by all three processes on CI's two cores (~2x the compile).
  config.model.update(encoder_buckets=1, diffusion_buckets=1, text_buckets=1)
  assert jax.device_count() == 8 and jax.process_count() == nproc
  tr = Trainer(config)
  # The same global batch whatever the process count: rows [pid*B/n, (pid+1)*B/n) here.
  full = next(make_dataset(config, "train", process_index=0, process_count=1).iterator())
  b = config.batch_size // nproc
  local = {k: np.asarray(v)[pid * b:(pid + 1) * b] for k, v in full.items()}
  batch = sharding.global_batch(tr.mesh, local)
  losses, lrs = [], []
  if ckpt_in == "-":
    state, steps = tr.fresh_state(), 2
  else:
    reader = ckpt_lib.Checkpointer(ckpt_in, read_only=True)
    state, _ = reader.restore(2, tr.abstract_state())
    steps = 1
  with jax.set_mesh(tr.mesh):
    step_fn = tr.train_step.lower(state, tr.frozen, batch).compile()
  barrier("compiled")
  with jax.set_mesh(tr.mesh):
    for _ in range(steps):
      state, m = step_fn(state, tr.frozen, batch)
      losses.append(float(jax.device_get(m["loss"])))
      lrs.append(float(jax.device_get(m["lr"])))
  if ckpt_out != "-":
    ck = ckpt_lib.Checkpointer(ckpt_out)
    ck.save(int(state["step"]), state, None)
    ck.wait()
    ck.close()
  params = multihost_utils.process_allgather(state["params"], tiled=True)
  if pid == 0:
    flat = {"/".join(getattr(k, "key", str(k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, losses=np.asarray(losses), lrs=np.asarray(lrs), **flat)


if __name__ == "__main__":
  main()
