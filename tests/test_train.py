"""Trainer: one schedule object, AdamW with the reference's exemptions, EMA, accumulation,
the paper configs' runlocal training 2 steps, and the non-finite stop."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import train_config as tiny_config


def test_schedule_is_one_object_in_fractions():
  from dream_jax.train.schedule import TrainSchedule
  c = tiny_config(total_steps=100)
  c.optim.lr = 1e-3
  c.schedule.update(kind="warmup_constant", warmup=0.1)
  s = TrainSchedule(c)
  out = s(jnp.arange(100))
  assert set(out) >= {"lr", "mask_center"}
  lr = np.asarray(out["lr"])
  np.testing.assert_allclose(lr[9:], 1e-3, rtol=1e-6)          # constant after 10% warm-up
  assert np.all(np.diff(lr[:10]) > 0) and lr[0] > 0
  m = c.masking                                                  # linear 0 -> 1 over [0, 0.75]
  assert (m.center_start, m.center_end, m.warmup_start, m.shape) == (0.0, 1.0, 0.0, "linear")
  np.testing.assert_allclose(out["mask_center"],
                             np.clip(np.arange(100) / 100 / m.warmup_end, 0, 1), 1e-6)
  # Doubling total_steps keeps the shape (boundaries are fractions of the run).
  c2 = tiny_config(total_steps=200)
  c2.optim.lr = 1e-3
  c2.schedule.update(kind="warmup_constant", warmup=0.1)
  s2 = TrainSchedule(c2)
  np.testing.assert_allclose(s2(jnp.arange(0, 200, 2))["mask_center"], out["mask_center"], 1e-6)
  c.schedule.update(kind="warmup_cosine", final_lr_frac=0.1)
  lr_cos = np.asarray(TrainSchedule(c).lr(jnp.array([10, 55, 100])))
  np.testing.assert_allclose(lr_cos, [1e-3, 5.5e-4, 1e-4], rtol=1e-3)


def _old_lr(step, total, kind, warmup, final, peak):
  """The hand-written schedule dream_jax used before the optax one (float64 numpy)."""
  p = step / total
  warm = np.minimum(1.0, (step + 1.0) / max(1.0, warmup * total)) if warmup > 0 else 1.0
  if kind == "warmup_constant":
    return peak * warm * np.ones_like(p)
  frac = np.clip((p - warmup) / max(1e-12, 1.0 - warmup), 0.0, 1.0)
  cos = final + (1.0 - final) * 0.5 * (1.0 + np.cos(np.pi * frac))
  return peak * np.where(p < warmup, warm, cos)


def _old_center(step, total, start, end, ws, we, shape):
  p = step / total
  frac = np.clip((p - ws) / max(we - ws, 1e-12), 0.0, 1.0)
  if we <= ws:
    frac = np.where(p >= ws, 1.0, 0.0)
  if shape == "cosine":
    frac = 0.5 * (1 - np.cos(np.pi * frac))
  return start + (end - start) * frac


@pytest.mark.parametrize("total,kind,warmup,final", [
    (100, "warmup_constant", 0.1, 0.0), (500, "warmup_cosine", 0.05, 0.1),
    (333, "warmup_cosine", 12 / 48, 0.0), (77, "warmup_cosine", 0.0, 0.2),
    (50, "warmup_constant", 0.0, 0.0), (40, "warmup_cosine", 0.01, 0.1)])
@pytest.mark.parametrize("masking", [(0.0, 1.0, 0.0, 36 / 48, "linear"),
                                     (0.2, 0.9, 0.1, 0.4, "cosine"),
                                     (0.0, 1.0, 0.3, 0.3, "linear"),
                                     (1.0, 1.0, 0.0, 0.75, "linear")])
def test_optax_schedule_equals_the_hand_written_formulas_at_every_step(total, kind, warmup,
                                                                       final, masking):
  from dream_jax.train.schedule import TrainSchedule
  c = tiny_config(total_steps=total)
  c.optim.lr = 3e-4
  c.schedule.update(kind=kind, warmup=warmup, final_lr_frac=final)
  start, end, ws, we, shape = masking
  c.masking.update(center_start=start, center_end=end, warmup_start=ws, warmup_end=we,
                   shape=shape)
  steps = np.arange(total + 1)
  out = TrainSchedule(c)(jnp.asarray(steps))
  np.testing.assert_allclose(out["lr"], _old_lr(steps, total, kind, warmup, final, 3e-4),
                             rtol=2e-6, atol=2e-6 * 3e-4)   # f32 near lr = 0
  np.testing.assert_allclose(out["mask_center"],
                             _old_center(steps, total, start, end, ws, we, shape),
                             rtol=2e-6, atol=2e-7)


def test_optimizer_is_adamw_with_reference_exemptions():
  from dream_jax.train.optim import weight_decay_mask
  from dream_jax.train import optim
  c = tiny_config()
  c.optim.update(grad_clip=3.0, weight_decay=0.04, b1=0.9, b2=0.95)
  params = {"diffloss": {"w": jnp.ones((3, 3))}, "dense": {"kernel": jnp.ones((4, 3)),
            "bias": jnp.ones((3,))}, "logit_scale": jnp.array(2.0),
            "buffer_embed": jnp.ones((5,))}
  grads = jax.tree.map(lambda p: 10.0 * jnp.ones_like(p), params)
  tx = optim.make_optimizer(c)
  upd, _ = tx.update(grads, tx.init(params), params)
  ours = optax.apply_updates(params, optim.apply_lr(upd, 1e-2))
  ref_tx = optax.chain(optax.clip_by_global_norm(3.0),
                       optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.04,
                                   mask=lambda p: weight_decay_mask(p, c)))
  ref_upd, _ = ref_tx.update(grads, ref_tx.init(params), params)
  ref = optax.apply_updates(params, ref_upd)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)
  mask = weight_decay_mask(params, c)
  assert mask["logit_scale"] and mask["buffer_embed"] and mask["dense"]["kernel"]
  assert not mask["dense"]["bias"] and not mask["diffloss"]["w"]


def test_ema_warmup_and_update():
  from dream_jax.train import optim
  c = tiny_config()
  c.ema.update(decay=0.999, warmup=True)
  assert float(optim.ema_decay(c, 0)) == pytest.approx(0.1)
  assert float(optim.ema_decay(c, 10**6)) == pytest.approx(0.999)
  c.ema.warmup = False
  assert float(optim.ema_decay(c, 0)) == pytest.approx(0.999)
  e = optim.update_ema({"a": jnp.zeros(2)}, {"a": jnp.ones(2)}, 0.9)
  np.testing.assert_allclose(e["a"], 0.1, rtol=1e-6)


def test_mesh_errors_are_clear():
  from dream_jax.train import sharding
  c = tiny_config()
  c.mesh.update(data=3, fsdp=2)
  with pytest.raises(ValueError, match="does not match the 8"):
    sharding.mesh_shape(c, 8)
  c.mesh.update(data=-1, fsdp=3)
  with pytest.raises(ValueError, match="fsdp=3 does not divide"):
    sharding.mesh_shape(c, 8)
  c = tiny_config(batch_size=12)
  c.masking.group_size = 4
  with pytest.raises(ValueError, match="not divisible by the"):
    sharding.mesh_shape(c, 8)
  assert sharding.fsdp_spec((4096, 3), 2) == jax.sharding.PartitionSpec("fsdp", None)
  assert sharding.fsdp_spec((16,), 2) == jax.sharding.PartitionSpec()


@pytest.mark.slow
def test_accumulation_refused_with_contrastive_and_runs_when_allowed():
  from dream_jax.train.trainer import Trainer
  from dream_jax.train import sharding
  with pytest.raises(ValueError, match="grad_accum_steps"):
    tiny_config(grad_accum_steps=2)
  c = tiny_config(grad_accum_steps=2, allow_accum_with_contrastive=True)
  tr = Trainer(c, devices=jax.devices()[:1])
  from dream_jax.data import make_dataset
  batch = next(make_dataset(c, "train").iterator())
  state = tr.fresh_state()
  with jax.set_mesh(tr.mesh):
    new, m = tr.train_step(state, tr.frozen, sharding.global_batch(tr.mesh, batch))
  assert float(m["negatives_effective"]) == 4 and float(m["negatives"]) == 4
  assert np.isfinite(float(m["loss"])) and int(new["step"]) == 1


@pytest.mark.slow
def test_paper_runlocal_trains_two_steps(tmp_path):
  """The paper config's runlocal trains 2 steps end to end (CI runs the same from main.py)."""
  from configs import dream_b16
  from dream_jax.train.trainer import train
  c = dream_b16.get_config("runlocal")
  c.total_steps = 2
  row = train(c, str(tmp_path), devices=jax.devices()[:1])
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in lines if "loss" in r] == [1, 2]
  assert np.isfinite(row["loss"]) and os.path.isdir(tmp_path / "checkpoints" / "2")
  last_train = [r for r in lines if "loss" in r][-1]   # the paper evals' row follows it
  for k in ("lr", "mask_center", "mask_ratio", "share_diffusion", "share_contrastive",
            "grad_norm", "param_norm", "logit_scale", "steps_per_sec", "examples_per_sec",
            "eta_sec"):
    assert k in last_train, k
  # The paper's evaluation protocols (configs/common.py:paper_evals) ran at the end, at
  # runlocal size: ImageNet-protocol probe and few-shot, FID-50k protocol (proxy FD without
  # Inception weights), ADE20K / NYU dense probes.
  evals = lines[-1]
  assert evals["step"] == 2
  for k in ("imagenet_probe/top1", "imagenet_probe/ridge_top1", "imagenet_fewshot/acc",
            "fid50k/proxy_fd_pixels", "fid50k/clip_score_internal", "ade20k_seg/miou",
            "nyu_depth/rmse"):
    assert k in evals and np.isfinite(evals[k]), k
  assert json.load(open(tmp_path / "config.json"))["total_steps"] == 2


@pytest.mark.parametrize("name", ["dream_l16", "dream_h16", "dream_g16"])
def test_other_sizes_runlocal_is_the_same_smoke_run(name):
  """runlocal replaces every size, so L/H/G smoke runs are B's (whose run is tested above;
  their paper sizes are checked by eval_shape in test_sizes.py)."""
  import importlib
  from configs import dream_b16
  want = dream_b16.get_config("runlocal").to_dict()
  got = importlib.import_module(f"configs.{name}").get_config("runlocal").to_dict()
  assert got["model"].pop("size") != want["model"].pop("size")
  assert got == want


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  """A NaN loss at step 3 stops the run with a clear error; checkpoint 2 (good) stays the
  latest and no checkpoint is written from the non-finite state (step 4 is never saved)."""
  from dream_jax.train.trainer import NonFiniteError, Trainer
  from dream_jax.train.checkpoint import Checkpointer
  c = tiny_config(total_steps=8)
  c.ckpt.every = 2
  tr = Trainer(c, devices=jax.devices()[:1])
  step_fn = tr.train_step

  def poisoned(state, frozen, batch):
    new, m = step_fn(state, frozen, batch)
    bad = new["step"] == 3
    return new, dict(m, loss=jnp.where(bad, jnp.nan, m["loss"]), finite=m["finite"] & ~bad)

  tr.train_step = poisoned
  with pytest.raises(NonFiniteError, match="at step 3.*last good checkpoint is step 2"):
    tr.run(str(tmp_path))
  assert Checkpointer(str(tmp_path / "checkpoints"), read_only=True).all_steps() == [2]


@pytest.mark.slow
def test_rng_impl_is_a_config_choice():
  """config.rng_impl switches the PRNG of the run (the state's key has its shape) without
  touching the process-global default; a bad name is a config error."""
  from dream_jax.data import make_dataset
  from dream_jax.train import sharding
  from dream_jax.train.trainer import Trainer
  with pytest.raises(ValueError, match="rng_impl"):
    tiny_config(rng_impl="mersenne")
  c = tiny_config(rng_impl="unsafe_rbg")
  c.model.update(attn_dropout=0.1, proj_dropout=0.1)
  try:
    tr = Trainer(c, devices=jax.devices()[:1])
    state = tr.fresh_state()
    assert state["rng"].shape == (4,)                     # rbg key data (threefry: (2,))
    batch = next(make_dataset(c, "train").iterator())
    with jax.set_mesh(tr.mesh):
      new, m = tr.train_step(state, tr.frozen, sharding.global_batch(tr.mesh, batch))
    assert np.isfinite(float(m["loss"])) and int(new["step"]) == 1
  finally:
    Trainer(tiny_config(), devices=jax.devices()[:1])
  assert jax.config.jax_default_prng_impl == "threefry2x32"
