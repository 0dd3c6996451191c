"""Workdir safety (dream_jax/train/workdir.py): a refused run leaves the workdir byte-
identical, differing keys are named, a run that died after its final checkpoint is completed
by the rerun, a disk that fills during a save stops the run at once with one message."""
import errno
import hashlib
import json
import os
import subprocess

import jax
import numpy as np
import pytest

from dream_jax.train import workdir as workdir_lib
from dream_jax.train.checkpoint import Checkpointer, CheckpointSaveError
from dream_jax.train.metrics import read_metrics


def tiny(steps=2, **sections):
  """tests/fault_config.py (tiny pixel-token run, held-out eval every 2 steps, 2 prompts)."""
  from tests import fault_config
  c = fault_config.get_config(f"steps={steps}")
  for key, value in sections.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def hashes(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, workdir)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
  from dream_jax.train.trainer import train
  w = str(tmp_path_factory.mktemp("w2"))
  train(tiny(2), w, devices=jax.devices()[:1])
  return w


def test_refused_rerun_leaves_workdir_byte_identical_and_sampling_works(run2, tmp_path):
  from dream_jax.train.trainer import train
  before = hashes(run2)
  assert "config.json" in before and "done.json" in before
  assert any(k.startswith("checkpoints/2/") for k in before)
  c = tiny(2, **{"model.width": 64, "model.dec_width": 64})
  for allow in (False, True):   # structural: refused even with --allow_config_change
    with pytest.raises(workdir_lib.WorkdirError, match=r"structural keys(.|\n)*"
                       r"config.model.width: workdir 32 vs this run 64"):
      train(c, run2, devices=jax.devices()[:1], allow_config_change=allow)
  assert hashes(run2) == before          # config.json, metrics, every checkpoint file
  from dream_jax import sample as cli
  s = cli.main([f"--workdir={run2}", "--prompt=a red circle", f"--out={tmp_path / 'o.png'}"])
  assert os.path.exists(s["out"])


def test_non_structural_change_needs_the_flag_then_resumes(run2, tmp_path):
  from dream_jax.train.trainer import train
  import shutil
  w = str(tmp_path / "w")
  shutil.copytree(run2, w)
  before = hashes(w)
  with pytest.raises(workdir_lib.WorkdirError, match=r"--allow_config_change(.|\n)*"
                     r"config.total_steps: workdir 2 vs this run 4"):
    train(tiny(4), w, devices=jax.devices()[:1])
  assert hashes(w) == before
  train(tiny(4), w, devices=jax.devices()[:1], allow_config_change=True)
  assert json.load(open(os.path.join(w, "config.json")))["total_steps"] == 4
  assert json.load(open(os.path.join(w, "done.json"))) == {"step": 4}
  rows = read_metrics(w)
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  assert [r["step"] for r in rows if "heldout/r1_i2t" in r] == [0, 2, 4]


def test_rerun_of_a_finished_run_does_nothing(run2, capsys):
  from dream_jax.train.trainer import train
  before = hashes(run2)
  train(tiny(2), run2, devices=jax.devices()[:1])
  assert "run already complete at step 2" in capsys.readouterr().out
  assert hashes(run2) == before


def test_crash_after_final_checkpoint_is_completed_by_the_rerun(tmp_path, monkeypatch, capsys):
  """The final evaluation crashes after the final checkpoint (the state a kill there leaves:
  checkpoint 2, no final eval row, no samples, no done.json); the rerun completes them."""
  from dream_jax.evaluators import heldout
  from dream_jax.train.trainer import train
  w = str(tmp_path / "w")
  orig = heldout.Evaluator.run

  def crash_at_end(self, *a, step=None, **kw):
    if step == 2:
      raise RuntimeError("simulated crash in the final evaluation")
    return orig(self, *a, step=step, **kw)

  monkeypatch.setattr(heldout.Evaluator, "run", crash_at_end)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train(tiny(2), w, devices=jax.devices()[:1])
  ck = Checkpointer(os.path.join(w, "checkpoints"), read_only=True)
  ck.manager.reload()
  assert ck.latest_step() == 2
  assert not os.path.exists(os.path.join(w, "done.json"))
  assert not os.path.exists(os.path.join(w, "samples", "step_000002.png"))
  assert [r["step"] for r in read_metrics(w) if "heldout/r1_i2t" in r] == [0]
  monkeypatch.setattr(heldout.Evaluator, "run", orig)
  capsys.readouterr()
  train(tiny(2), w, devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert "completing the final evaluation and samples (heldout)" in out
  assert [r["step"] for r in read_metrics(w) if "heldout/r1_i2t" in r] == [0, 2]
  assert [r["step"] for r in read_metrics(w) if "loss" in r] == [1, 2]   # no duplicates
  assert os.path.exists(os.path.join(w, "samples", "step_000002.png"))
  assert json.load(open(os.path.join(w, "done.json"))) == {"step": 2}


def test_divergence_before_the_first_checkpoint_says_so(tmp_path):
  from dream_jax.train.trainer import NonFiniteError, Trainer
  tr = Trainer(tiny(4), devices=jax.devices()[:1])
  step_fn = tr.train_step

  def poisoned(state, frozen, batch):
    new, m = step_fn(state, frozen, batch)
    return new, dict(m, finite=m["finite"] & (new["step"] != 1))

  tr.train_step = poisoned
  with pytest.raises(NonFiniteError, match="at step 1; stopping. No checkpoint was written "
                                           "yet") as e:
    tr.run(str(tmp_path))
  assert "None" not in str(e.value)


def test_atomic_write_leaves_no_partial_file(tmp_path):
  p = str(tmp_path / "x.json")
  workdir_lib.atomic_write_text(p, "a" * 10)

  class Boom(Exception):
    pass

  real = os.fsync

  def fail(fd):
    raise Boom()
  os.fsync = fail
  try:
    with pytest.raises(Boom):
      workdir_lib.atomic_write_text(p, "b" * 10)
  finally:
    os.fsync = real
  assert open(p).read() == "a" * 10 and os.listdir(tmp_path) == ["x.json"]


def _tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                     capture_output=True)
  return r.returncode == 0


def test_disk_full_during_a_save_stops_at_that_step(tmp_path, monkeypatch, capsys):
  """W/checkpoints on a tmpfs that holds one checkpoint (when the test may mount one, else
  an injected ENOSPC in the save): the run stops with ONE error naming the failed save's
  step (not a later one), no traceback storm, and the previous checkpoint still restores."""
  from dream_jax.train.trainer import train
  w = str(tmp_path / "w")
  ck_dir = os.path.join(w, "checkpoints")
  c = tiny(6, **{"ckpt.keep": 3})
  c.evals = c.evals.__class__()        # no evaluator: the failure is the save's alone
  mounted = _tmpfs(ck_dir, "3500k")
  try:
    if not mounted:
      real_save = Checkpointer.save

      def save(self, step, *a, **kw):
        if step == 4:
          raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_save(self, step, *a, **kw)
      monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(CheckpointSaveError) as e:
      train(c, w, devices=jax.devices()[:1])
    msg = str(e.value)
    assert "No space left on device" in msg and "The last complete checkpoint is step 2" in msg
    failed = int(msg.split("saving checkpoint step ")[1].split()[0])
    assert failed == 4, msg
    # Stopped once the background write's failure was known (polled every step; at the
    # latest before the next save): nothing after step 2 was checkpointed.
    ck = Checkpointer(ck_dir, read_only=True)
    assert ck.latest_step() == 2 and ck.all_steps() == [2]
    from dream_jax.train.inference import load_for_inference
    _, _, variables, _ = load_for_inference(w, step=2)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
  finally:
    if mounted:
      subprocess.run(["umount", "-l", ck_dir])
  assert "Traceback" not in capsys.readouterr().err      # one message, no log storm
  print("tmpfs" if mounted else "injected")
