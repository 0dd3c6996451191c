"""Representation evaluators: known answers (separable features -> 100%, identical
embeddings -> R@1 = 1, separable clusters few-shot -> 100%) with recomputed expectations,
the probe protocol's normalisation, multi-host row splitting, the feature cache, and the
evaluators end to end on the trainer's predict functions of a tiny random model."""
import jax
import numpy as np
import pytest

from configs import evaluators as ev_configs
from dream_jax.evaluators import (EVALUATORS, EvalContext, FeatureCache, build_evaluator,
                                  get_evaluator)
from dream_jax.evaluators import common, fewshot, probe, retrieval, zeroshot


def separable(n_per, classes, dim, seed, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * 3
  y = np.repeat(np.arange(classes), n_per)
  return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_linear_probe_separable_is_perfect_and_random_is_chance():
  xtr, ytr = separable(40, 6, 16, 0)
  xte, yte = separable(20, 6, 16, 0)      # same centres, fresh noise
  kw = dict(epochs=20, warmup_epochs=2, batch_size=32, base_lr=100.0, weight_decay=0.0,
            momentum=0.9, trust_coefficient=0.001, lars=True, seed=0)
  out = probe.probe_scores(xtr, ytr, xte, yte, 6, ridge=1e-3, **kw)
  assert out["top1"] == 1.0 and out["ridge_top1"] == 1.0 and out["train_top1"] == 1.0
  rng = np.random.default_rng(1)
  noise = probe.probe_scores(rng.normal(size=(240, 16)), ytr, rng.normal(size=(120, 16)), yte,
                             6, ridge=1e-3, **kw)
  assert noise["top1"] < 0.4 and noise["ridge_top1"] < 0.4      # chance 1/6


def test_probe_normalisation_matches_definition():
  rng = np.random.default_rng(0)
  tr, te = rng.normal(3, 2, size=(50, 8)), rng.normal(size=(10, 8))
  a, b = probe.normalise(tr, te)
  ln = lambda x: (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-6)
  mu, sd = ln(tr).mean(0), np.sqrt(ln(tr).var(0) + 1e-6)
  np.testing.assert_allclose(a, (ln(tr) - mu) / sd, rtol=1e-10)
  np.testing.assert_allclose(b, (ln(te) - mu) / sd, rtol=1e-10)
  np.testing.assert_allclose(a.mean(0), 0, atol=1e-10)


def test_ridge_classifier_matches_lstsq_and_dual_form():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
  w, b = probe.ridge_classifier(x, y, 3, 0.0)
  xa = np.concatenate([x, np.ones((30, 1))], 1)
  ref = np.linalg.lstsq(xa, np.eye(3)[y], rcond=None)[0]
  np.testing.assert_allclose(np.concatenate([w, b[None]]), ref, atol=1e-8)
  xw = rng.normal(size=(6, 20))            # d > n: the dual form
  w1, b1 = probe.ridge_classifier(xw, np.arange(6) % 3, 3, 0.1)
  xc = xw - xw.mean(0)
  t = np.eye(3)[np.arange(6) % 3]
  w2 = np.linalg.solve(xc.T @ xc + 0.1 * 6 * np.eye(20), xc.T @ (t - t.mean(0)))
  np.testing.assert_allclose(w1, w2, atol=1e-8)


def test_fewshot_separable_clusters_is_perfect():
  xtr, ytr = separable(10, 8, 12, 0)
  xte, yte = separable(10, 8, 12, 0)
  accs = fewshot.episodes(xtr, ytr, xte, yte, ways=5, shots=5, queries=5, num=30, ridge=1.0,
                          seed=0)
  assert accs.shape == (30,) and (accs == 1.0).all()
  rng = np.random.default_rng(0)          # random features: chance (large pools, 300 draws)
  y = np.repeat(np.arange(8), 100)
  accs = fewshot.episodes(rng.normal(size=(800, 12)), y, rng.normal(size=(800, 12)), y,
                          ways=5, shots=5, queries=5, num=300, ridge=1.0, seed=0)
  assert abs(accs.mean() - 0.2) < 0.03
  with pytest.raises(ValueError, match="5-way needs 5"):
    fewshot.episodes(xtr, ytr % 3, xte, yte % 3, ways=5, shots=5, queries=5, num=1, ridge=1.0,
                     seed=0)


def test_retrieval_identical_embeddings_and_chance():
  rng = np.random.default_rng(0)
  n = 40
  e = fewshot.l2_normalise(rng.normal(size=(n, 16)))
  same = np.eye(n, dtype=bool)
  out = retrieval.recall_at_k(e, e, same)
  assert all(out[f"{d}_r@{k}"] == 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
  assert out["chance@1"] == pytest.approx(1 / n) and out["chance@10"] == pytest.approx(10 / n)
  # Caption 1 duplicates caption 0: either counts; reversing the text side breaks R@1.
  same[0, 1] = same[1, 0] = True
  out = retrieval.recall_at_k(e, e[::-1], same, ks=(1,))
  brute = np.mean([same[i, np.argmax(e[i] @ e[::-1].T)] for i in range(n)])
  assert out["i2t_r@1"] == pytest.approx(brute)
  assert out["chance@1"] == pytest.approx((n + 2) / n ** 2)


def test_zeroshot_class_embeddings_and_top1():
  rng = np.random.default_rng(0)
  cls = fewshot.l2_normalise(rng.normal(size=(4, 8)))
  # Two templates per class: noisy copies of the class direction.
  txt = np.repeat(cls, 2, axis=0) + 0.01 * rng.normal(size=(8, 8))
  txt = fewshot.l2_normalise(txt)
  c = zeroshot.class_embeddings(txt, 4, 2)
  np.testing.assert_allclose(c, cls, atol=0.02)
  labels = rng.integers(0, 4, 50)
  assert zeroshot.zeroshot_top1(cls[labels], c, labels) == 1.0


def test_map_batches_pads_and_keeps_order():
  calls = []

  def fn(b):
    calls.append(len(b["x"]))
    return dict(y=b["x"] * 2)

  x = np.arange(11, dtype=np.float32)
  out = common.map_batches(fn, dict(x=x), 4)
  np.testing.assert_array_equal(out["y"], 2 * x)
  assert calls == [4, 4, 4]                 # fixed shape: the last batch padded


def test_feature_cache_computes_once():
  cache, n = FeatureCache(), []
  for _ in range(3):
    assert cache.get(("a", 1), lambda: n.append(1) or 7) == 7
  assert n == [1] and cache.hits == 2


def test_registry_and_config_entries_agree():
  """Every kind has a config entry whose own keys are exactly its constructor's arguments."""
  import inspect
  assert set(ev_configs.DEFAULTS) | {"fidelity"} == set(EVALUATORS)
  for kind, make in ev_configs.DEFAULTS.items():
    entry = make()
    params = inspect.signature(get_evaluator(kind).__init__).parameters
    own = {k for k in entry.keys() if k not in ev_configs.COMMON}
    named = {k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != "context"}
    required = {k for k in named if params[k].default is inspect.Parameter.empty}
    assert required <= own <= named, kind
  with pytest.raises(ValueError, match="unknown evaluator"):
    get_evaluator("nope")
  bad = ev_configs.linear_probe(typo_key=1)
  with pytest.raises(TypeError, match="typo_key"):
    build_evaluator(bad, {}, EvalContext(None))


@pytest.fixture(scope="module")
def tiny_run():
  from dream_jax.train.predict import make_predict_fns
  from dream_jax.train.trainer import Trainer
  from tests.test_train import tiny_config
  c = tiny_config()
  tr = Trainer(c, devices=jax.devices()[:2])
  state = tr.fresh_state()
  variables = {"params": state["ema_params"], "batch_stats": state["batch_stats"]}
  return c, tr, variables, make_predict_fns(tr.components, tr.frozen, tr.mesh)


def test_representation_evaluators_on_tiny_model(tiny_run):
  c, tr, variables, fns = tiny_run
  small = lambda label, **kw: ev_configs.shapes_data(label, train_size=64, test_size=32, **kw)
  entries = dict(
      probe=ev_configs.linear_probe(data=small("color"), epochs=3, warmup_epochs=1,
                                    batch_size=16, feature_batch=16),
      probe_all=ev_configs.linear_probe(data=small("color"), pooling="all_mean",
                                        final_norm=False, epochs=0, feature_batch=16),
      fewshot=ev_configs.fewshot(data=small("color"), episodes=10, queries=3,
                                 feature_batch=16),
      zeroshot=ev_configs.zeroshot(data=small("color"), feature_batch=16),
      retrieval=ev_configs.retrieval(data=ev_configs.shapes_data("none", train_size=0,
                                                                 test_size=24),
                                     feature_batch=16))
  cache = FeatureCache()
  ctx = EvalContext(c)
  out = {}
  with jax.set_mesh(tr.mesh):
    for name, entry in entries.items():
      out[name] = build_evaluator(entry, fns, ctx).run(variables, step=0, cache=cache)
  assert 0 <= out["probe"]["top1"] <= 1 and out["probe"]["num_classes"] == 8
  assert out["probe"]["num_train"] == 64 and out["probe"]["num_test"] == 32
  assert "top1" not in out["probe_all"] and 0 <= out["probe_all"]["ridge_top1"] <= 1
  assert 0 <= out["fewshot"]["acc"] <= 1 and out["fewshot"]["chance"] == 0.2
  assert out["zeroshot"]["chance"] == 1 / 8 and out["zeroshot"]["num_test"] == 32
  assert out["retrieval"]["num_examples"] == 24
  assert cache.hits >= 3   # probe_all and fewshot reuse the probe's features
  # Pre- and post-LayerNorm features differ; the buffer mean is the mean of the buffer rows.
  from dream_jax.evaluators import datasets
  d = datasets.load_split(small("color"), c, "test")
  with jax.set_mesh(tr.mesh):
    f = fns["embed_image_features"](variables, dict(image=d.images[:8]))
    t = fns["embed_image_tokens"](variables, dict(image=d.images[:8]))
  assert not np.allclose(f["buffer_mean"], f["buffer_mean_no_ln"])
  assert t["tokens"].shape == (8, 16, c.model.width)
  l = t["tokens"].shape[1]
  nb = c.model.buffer_size
  np.testing.assert_allclose(f["all_mean"] * (nb + l) - t["tokens"].sum(1),
                             f["buffer_mean"] * nb, rtol=1e-4, atol=1e-4)
