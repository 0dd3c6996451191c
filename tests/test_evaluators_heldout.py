"""Held-out evaluator: retrieval R@1 rule and chance level, aggregation over batches with
padding, the registry, and the trainer's real predict functions on a tiny model."""
import jax
import ml_collections
import numpy as np
import pytest

from dream_jax.evaluators import EVALUATORS, get_evaluator
from dream_jax.evaluators.heldout import Evaluator, retrieval_r1

pytestmark = pytest.mark.slow   # slow tier: trains, runs main.py or compiles a sampler


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_retrieval_r1_perfect_random_and_duplicates():
  rng = np.random.default_rng(0)
  n = 64
  emb = unit(rng.normal(size=(n, 16)))
  ids = np.arange(n)[:, None].repeat(4, 1)
  r = retrieval_r1(emb, emb, ids)
  assert r["r1_i2t"] == 1.0 and r["r1_t2i"] == 1.0 and r["r1_chance"] == pytest.approx(1 / n)
  shuffled = retrieval_r1(emb, unit(rng.normal(size=(n, 16))), ids)
  assert shuffled["r1_i2t"] < 0.2 and shuffled["r1_t2i"] < 0.2
  # Captions 0 and 1 identical: retrieving either counts, the chance level accounts for it.
  ids[1] = ids[0]
  txt = emb.copy()
  txt[[0, 1]] = txt[[1, 0]]
  r = retrieval_r1(emb, txt, ids)
  assert r["r1_i2t"] == 1.0 and r["r1_chance"] == pytest.approx((n + 2) / n ** 2)


class FakeData:
  """Two batches; the second has padding rows (valid False) that must be ignored."""

  def __init__(self, emb):
    self.emb = emb

  def iterator(self):
    n = len(self.emb)
    for lo in (0, n // 2):
      idx = np.arange(lo, lo + n // 2)
      valid = idx < n - 3
      yield dict(idx=idx, clip_ids=np.stack([idx, idx], 1).astype(np.int32), valid=valid)


def test_evaluator_run_with_fake_predict_fns():
  rng = np.random.default_rng(1)
  emb = unit(rng.normal(size=(32, 8)))
  fns = dict(embed_image=lambda v, b: emb[b["idx"]],
             embed_text=lambda v, b: np.where(b["idx"][:, None] % 2 == 0, emb[b["idx"]],
                                              -emb[b["idx"]]),
             diffusion_loss_at=lambda v, b, r, s, other=False: dict(
                 own=np.full(len(b["idx"]), r) + b["idx"],
                 other=np.full(len(b["idx"]), r) + b["idx"] + 0.25))
  cfg = ml_collections.ConfigDict(dict(kind="heldout", every=1, diffusion_ratio=0.9, seed=0))
  out = Evaluator(cfg, config=None).run(fns, FakeData(emb), None, step=0)
  assert out["num_examples"] == 29                          # 3 padding rows dropped
  assert out["r1_i2t"] == pytest.approx(15 / 29)            # even rows match, odd anti-match
  assert out["diffusion_loss@0.9"] == pytest.approx(0.9 + np.arange(29).mean())
  assert out["z_info@0.9"] == pytest.approx(0.25)
  assert set(EVALUATORS) >= {"heldout", "fidelity"} and get_evaluator("heldout") is Evaluator
  with pytest.raises(ValueError, match="unknown evaluator"):
    get_evaluator("nope")


def test_heldout_on_tiny_model_predict_fns():
  """The trainer's predict fns: embeddings are unit-norm, the fixed-ratio diffusion loss is
  deterministic (fixed order, t and noise) and depends on the ratio."""
  from dream_jax.data import make_dataset
  from dream_jax.train.predict import make_predict_fns
  from dream_jax.train.trainer import Trainer
  from tests.helpers import train_config as tiny_config
  c = tiny_config()
  c.data.eval_size = 12          # 8 + 4: the second batch is padded to the device count
  tr = Trainer(c, devices=jax.devices()[:1])
  state = tr.fresh_state()
  variables = {"params": state["ema_params"], "batch_stats": state["batch_stats"]}
  fns = make_predict_fns(tr.components, tr.frozen, tr.mesh)
  data = make_dataset(c, "eval")
  batch = next(data.iterator())
  with jax.set_mesh(tr.mesh):
    img = fns["embed_image"](variables, batch)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    a = fns["diffusion_loss_at"](variables, batch, 0.9, 0)
    b = fns["diffusion_loss_at"](variables, batch, 0.9, 0)
    lo = fns["diffusion_loss_at"](variables, batch, 0.5, 0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (len(batch["clip_ids"]),) and not np.allclose(a, lo)
    # Another sample's condition changes the loss (same t, noise and order otherwise). A
    # fresh head ignores z (zero-init adaLN and output layer), so perturb the weights first.
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = dict(variables, params=jax.tree.unflatten(tree, [
        p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]))
    own = fns["diffusion_loss_at"](noisy, batch, 0.9, 0)
    both = fns["diffusion_loss_at"](noisy, batch, 0.9, 0, True)
    np.testing.assert_array_equal(both["own"], own)        # one pass gives the plain loss too
    other = both["other"]
    assert other.shape == a.shape and not np.allclose(other, own)
    # Every sample masks the same positions: in a batch of copies of one example, another
    # sample's z IS this sample's z (per-sample masks would swap in z from other positions).
    same = {k: np.repeat(np.asarray(x)[:1], len(x), axis=0) for k, x in batch.items()}
    copies = fns["diffusion_loss_at"](noisy, same, 0.9, 0, True)
    np.testing.assert_allclose(copies["other"], copies["own"], rtol=1e-6)
    cfg = ml_collections.ConfigDict(dict(kind="heldout", every=1, diffusion_ratio=0.9, seed=0))
    out = Evaluator(cfg, config=c).run(fns, data, variables, step=0)
  assert out["num_examples"] == 12 and 0 <= out["r1_i2t"] <= 1
  assert np.isfinite(out["z_info@0.9"])
