"""launch/ scripts and benchmarks/gpu_check.sh: bash syntax, shellcheck (when installed) and
the DRY_RUN=1 mode that prints what they would run."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/common.sh",
           "benchmarks/gpu_check.sh"]


def run(args, env=None):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, **(env or {})))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
  r = run(["bash", "-n", script])
  assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (Debian: apt-get install shellcheck)")
def test_shellcheck_clean():
  r = run(["shellcheck", *SCRIPTS])
  assert r.returncode == 0, r.stdout + r.stderr


def test_tpu_pod_dry_run_prints_the_remote_command():
  r = run(["bash", "launch/tpu_pod.sh", "--config.batch_size=2048", "--config.data.path=gs://b/{0..9}.tar"],
          env=dict(DRY_RUN="1", TPU_NAME="pod", ZONE="z1", CONFIG="configs/dream_b16.py",
                   WORKDIR="gs://bucket/run"))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert len(lines) == 3 and all(l.startswith("DRY_RUN: ") for l in lines)
  assert "tpu-vm scp" in lines[1] and "--worker=all" in lines[1]
  assert "jax[tpu]==" in lines[2] and "--config=configs/dream_b16.py" in lines[2]
  assert "--workdir=gs://bucket/run --config.batch_size=2048" in lines[2]
  # The brace pattern reaches main.py quoted (not expanded by the remote shell).
  assert r"gs://b/\\{0..9\\}.tar" in lines[2]


def test_tpu_pod_requires_its_variables():
  r = run(["bash", "launch/tpu_pod.sh"], env=dict(DRY_RUN="1"))
  assert r.returncode != 0 and "TPU_NAME" in r.stderr


def test_slurm_dry_run():
  r = run(["bash", "launch/slurm_gpu.sbatch", "configs/dream_b16.py", "/tmp/w", "--config.x=1"],
          env=dict(DRY_RUN="1"))
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == ("DRY_RUN: srun python main.py --config=configs/dream_b16.py "
                              "--workdir=/tmp/w --config.x=1")


def test_gpu_check_dry_run_installs_the_pinned_cuda_jax():
  r = run(["bash", "benchmarks/gpu_check.sh", "--steps=3"], env=dict(DRY_RUN="1"))
  assert r.returncode == 0, r.stderr
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    version = next(l for l in f if l.startswith("jax==")).split("==")[1].split()[0]
  assert f"jax\\[cuda12\\]=={version}" in r.stdout
  assert r.stdout.splitlines()[-1].endswith("benchmarks/gpu_step.py --steps=3")
