"""Checkpoints: SIGKILL mid-run + rerun == uninterrupted run (bitwise), a checkpoint that
does not fit the config is refused with the mismatching names, EMA + BN statistics restore
alone (`load_for_inference`), `ckpt.init_from`, retention (last N + permanent every K)."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow   # slow tier: trains, runs main.py or compiles a sampler

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# The tiny config of tests/test_train.py, as command-line overrides of dream_b16:runlocal.
TINY_FLAGS = ["--config=configs/dream_b16.py:runlocal", "--config.tokenizer.kind=identity",
              "--config.tokenizer.patch_size=4",
              "--config.data.image_size=16", "--config.text.cond_encoder=small",
              "--config.text.small_width=32", "--config.text.small_layers=1",
              "--config.text.small_heads=2", "--config.total_steps=6", "--config.ckpt.every=2",
              "--config.ckpt.keep=2"]
TIMING = ("steps_per_sec", "examples_per_sec", "eta_sec", "elapsed_sec")


def run_main(workdir, *extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)          # one CPU device in the child
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *TINY_FLAGS,
                         *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


def rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def final_row(workdir, step):
  row = [r for r in rows(workdir) if r["step"] == step and "loss" in r][-1]
  return {k: v for k, v in row.items() if k not in TIMING}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("ckpt")
  full, killed = str(base / "full"), str(base / "killed")
  r = run_main(full)
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_main(killed, "--config.debug_stop_after=3")
  assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
  steps = sorted(int(s) for s in os.listdir(os.path.join(killed, "checkpoints")) if s.isdigit())
  assert steps == [2], steps            # killed after step 3: only step 2 was checkpointed
  r = run_main(killed)
  assert r.returncode == 0, r.stderr[-3000:]
  return full, killed


def _restore_all(workdir, step):
  from dream_jax.train.checkpoint import Checkpointer
  import orbax.checkpoint as ocp
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  out = ck.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), ema=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, dict(out["state"], ema=out["ema"]))


def test_resume_after_sigkill_is_bitwise_identical(runs):
  full, killed = runs
  assert final_row(killed, 6) == final_row(full, 6)        # every logged metric, exactly
  a, b = _restore_all(full, 6), _restore_all(killed, 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)        # params, opt state, EMA, BN, rng
  assert int(a["step"]) == 6


def test_retention_keeps_last_n_and_permanent(runs, tmp_path):
  full, _ = runs
  assert sorted(int(s) for s in os.listdir(os.path.join(full, "checkpoints"))
                if s.isdigit()) == [4, 6]            # keep=2
  from dream_jax.train.checkpoint import Checkpointer
  ck = Checkpointer(str(tmp_path), keep=1, permanent_every=2, async_save=False)
  tree = {"step": np.int32(0), "params": {"w": np.ones(3, np.float32)},
          "opt_state": {}, "rng": np.zeros(2, np.uint32), "ema_params": {"w": np.ones(3)},
          "batch_stats": {}}
  for s in range(1, 6):
    ck.save(s, tree, {"pos": s})
  ck.close()
  assert ck.all_steps() == [2, 4, 5]


def test_meta_manifest_and_load_for_inference(runs):
  full, _ = runs
  from dream_jax.train.inference import load_for_inference
  meta = json.load(open(os.path.join(full, "checkpoints", "6", "meta", "meta.json")))
  assert meta["format_version"] == 1 and meta["step"] == 6
  assert any(k.startswith("ema/batch_stats/") for k in meta["manifest"])
  config, model, variables, frozen = load_for_inference(full)
  assert config.total_steps == 6 and set(variables) == {"params", "batch_stats"}
  ref = _restore_all(full, 6)["ema"]
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, variables), ref)
  emb, _ = model.embed_text(variables, np.ones((2, config.text.context_length), np.int32),
                            np.array([3, 3], np.int32))
  assert np.isfinite(np.asarray(emb)).all()


def test_mismatching_checkpoint_is_refused_with_names(runs):
  full, _ = runs
  from tests.helpers import train_config as tiny_config
  from dream_jax.train.trainer import Trainer
  from dream_jax.train.checkpoint import Checkpointer
  c = tiny_config(total_steps=6)
  c.model.update(width=48, dec_width=48)
  tr = Trainer(c, devices=jax.devices()[:1])
  ck = Checkpointer(os.path.join(full, "checkpoints"), read_only=True)
  with pytest.raises(ValueError, match=r"does not fit the config:\n(.|\n)*ema/params/"
                                       r"buffer_embed: checkpoint \[\[1, 32\], 'float32'\] "
                                       r"vs config \[\[1, 48\]"):
    ck.restore(6, tr.abstract_state())


def test_init_from_another_run(runs):
  full, _ = runs
  from tests.helpers import train_config as tiny_config
  from dream_jax.train.trainer import Trainer
  c = tiny_config(total_steps=6)
  c.ckpt.init_from = full
  tr = Trainer(c, devices=jax.devices()[:1])
  state = tr.init_from(full, tr.fresh_state())
  ref = _restore_all(full, 6)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state["params"]),
               ref["params"])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state["ema_params"]),
               ref["params"])
  assert int(state["step"]) == 0
