"""Fréchet distance (vs scipy on fixed statistics; a set with itself ~0), the Inception
Score (vs a direct recomputation of torch-fidelity's formula), the proxy pixel features,
dense probes on the shapes renderer's ground truth, and the FID evaluator end to end with
fake sampler / embedding predict fns (the proxy path and the reference-statistics cache)."""
import numpy as np
import pytest
import scipy.linalg

from configs import dream_b16, evaluators as ev_configs
from dream_jax.data import shapes
from dream_jax.evaluators import EvalContext, FeatureCache, build_evaluator, dense, frechet


def _fixed_stats(d, seed):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(d, d))
  return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_matches_scipy_and_self_is_zero():
  mu1, s1 = _fixed_stats(16, 0)
  mu2, s2 = _fixed_stats(16, 1)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
  assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
  x = np.random.default_rng(2).normal(size=(300, 8))
  st = frechet.statistics(x)
  assert abs(frechet.frechet_distance(st["mu"], st["sigma"], st["mu"], st["sigma"])) < 1e-9
  # Rank-deficient covariances (fewer samples than dimensions): finite and >= 0.
  a = frechet.statistics(np.random.default_rng(3).normal(size=(5, 20)))
  b = frechet.statistics(np.random.default_rng(4).normal(size=(5, 20)))
  fd = frechet.frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
  assert np.isfinite(fd) and fd > 0
  np.testing.assert_allclose(frechet.psd_sqrt(s1) @ frechet.psd_sqrt(s1), s1, atol=1e-10)


def test_inception_score_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(100, 10)) * 3
  mean, std = frechet.inception_score(logits, splits=4, seed=2020)
  perm = np.random.RandomState(2020).permutation(100)
  p = np.exp(logits[perm]) / np.exp(logits[perm]).sum(1, keepdims=True)
  scores = []
  for i in range(4):
    c = p[i * 25:(i + 1) * 25]
    scores.append(np.exp(np.mean([np.sum(r * np.log(r / c.mean(0))) for r in c])))
  assert mean == pytest.approx(np.mean(scores)) and std == pytest.approx(np.std(scores))
  one_hot = np.eye(10)[np.arange(100) % 10] * 100      # confident and diverse: IS -> 10
  assert frechet.inception_score(one_hot, splits=1)[0] == pytest.approx(10, rel=1e-6)


def test_pixel_proxy_features_separate_distributions():
  """Two halves of the same distribution give the floor; blur, noise and blank images are
  several floors away (the perturbations a weak generator shows)."""
  imgs = np.stack([shapes.make_example(0, i, 32)["image"] for i in range(400)])
  f = frechet.pixel_features(imgs)
  assert f.shape == (400, 120) and np.isfinite(f).all()
  fd = lambda a, b: frechet.frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
  s = lambda x: frechet.statistics(frechet.pixel_features(x))
  ref = s(imgs[:200])
  floor = fd(ref, s(imgs[200:]))
  blurred = imgs.reshape(400, 8, 4, 8, 4, 3).mean((2, 4)).repeat(4, 1).repeat(4, 2)
  noisy = np.clip(imgs + np.random.default_rng(0).normal(0, 40, imgs.shape), 0, 255)
  assert fd(ref, s(blurred[200:].astype(np.uint8))) > 1.5 * floor
  assert fd(ref, s(noisy[200:].astype(np.uint8))) > 10 * floor
  assert fd(ref, s(np.zeros_like(imgs[200:]))) > 10 * floor


def test_mean_iou_known_answer():
  gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  assert dense.mean_iou(gt, gt, 3, 255) == (1.0, 1.0)
  pred = np.array([[0, 1, 1, 1], [2, 2, 0, 1]])
  # class 0: tp 1, fp 0, fn 1 -> 1/2; class 1: tp 3, fp 1 -> 3/4; class 2: 1.
  miou, acc = dense.mean_iou(pred, gt, 3, 255)
  assert miou == pytest.approx((0.5 + 0.75 + 1.0) / 3) and acc == pytest.approx(6 / 7)


def test_dense_probes_on_oracle_token_features():
  """Tokens that carry their patch's ground truth (one-hot class / depth) give near-perfect
  probes; random tokens do not."""
  n, size, g = 48, 32, 8
  exs = [shapes.make_example_maps(0, i, size) for i in range(n)]
  seg = np.stack([e["segmentation"] for e in exs])
  dep = np.stack([e["depth"] for e in exs])
  f = size // g
  patch_cls = seg.reshape(n, g, f, g, f).transpose(0, 1, 3, 2, 4).reshape(n, g, g, -1)
  major = np.stack([[[np.bincount(p, minlength=5).argmax() for p in row] for row in im]
                    for im in patch_cls])
  oracle = np.eye(5)[major] * 4.0
  params = dense.train_segmentation_head(oracle[:32], seg[:32], 5, steps=200, lr=0.1,
                                         batch_size=16, weight_decay=0.0, ignore_index=255,
                                         seed=0)
  pred = dense.predict_segmentation(params, oracle[32:], size)
  miou, acc = dense.mean_iou(pred, seg[32:], 5, 255)
  rand = np.random.default_rng(0).normal(size=oracle.shape)
  p2 = dense.train_segmentation_head(rand[:32], seg[:32], 5, steps=200, lr=0.1, batch_size=16,
                                     weight_decay=0.0, ignore_index=255, seed=0)
  miou_rand, _ = dense.mean_iou(dense.predict_segmentation(p2, rand[32:], size), seg[32:], 5,
                                255)
  assert acc > 0.9 and miou > 0.5 and miou > miou_rand + 0.3
  dtok = dep.reshape(n, g, f, g, f).mean((2, 4))[..., None]
  out = dense.depth_probe(dtok[:32], dep[:32], dtok[32:], dep[32:], 1e-6)
  assert out["rmse"] < 0.5 * out["rmse_mean_baseline"]


def fake_external_scorer(images, prompts):
  """An 'external CLIP scorer' for the hook test: mean brightness x 100 per image."""
  assert len(images) == len(prompts) and images.dtype == np.uint8
  return images.reshape(len(images), -1).mean(1) / 255 * 100


def test_fid_evaluator_proxy_path_and_stats_cache(tmp_path):
  """Fake sampler returning the reference images themselves: FD(gen, ref) = 0 exactly (same
  features), the cache file is written once and reused; a sampler returning black images is
  far; CLIP score internal uses the named embedding fns."""
  c = dream_b16.get_config("runlocal")
  c.data.eval_size = 32
  src = shapes.ShapesSource(c.seed, 32, c.data.image_size, offset=shapes.HELDOUT_OFFSET,
                                max_objects=c.data.max_objects,
                                two_object_prob=c.data.two_object_prob)
  by_caption = {}
  for i in range(32):
    r = src.load(i)
    by_caption.setdefault(r["caption"], r["image"])
  calls = []

  def sample(variables, frozen, prompts, rng, **kw):
    calls.append(len(prompts))
    return dict(images=np.stack([by_caption[p] for p in prompts]))

  def black(variables, frozen, prompts, rng, **kw):
    return dict(images=np.zeros((len(prompts), 32, 32, 3), np.uint8))

  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  fns = dict(sample=sample, black=black,
             embed_image=lambda v, b: unit(np.ones((len(b["image"]), 4))),
             embed_captions=lambda v, caps: unit(np.ones((len(caps), 4))))
  entry = ev_configs.fid(num_samples=32, batch=8, stats_dir=str(tmp_path))
  ev = build_evaluator(entry, fns, EvalContext(c))
  out = ev.run(None, cache=FeatureCache())
  assert out["proxy_fd_pixels"] == pytest.approx(0.0, abs=1e-6) and "fid" not in out
  assert out["proxy_fd_pixels_ref_halves"] > 0
  assert out["clip_score_internal"] == pytest.approx(100.0)
  assert calls == [8, 8, 8, 8]
  assert len(list(tmp_path.glob("*.npz"))) == 1
  entry.pred = "black"
  entry.external_clip_scorer = "tests.test_evaluators_generation:fake_external_scorer"
  out2 = build_evaluator(entry, fns, EvalContext(c)).run(None)
  assert out2["clip_score_external"] == 0.0            # the hook saw the black images
  # Blank images are far from the reference (identical images gave exactly 0); at n = 32 the
  # halves (16 vs 16) floor is inflated by rank-deficient covariances, so compare with the
  # real-vs-real distance of two DIFFERENT real sets of 32 instead.
  other = frechet.statistics(frechet.pixel_features(np.stack(
      [shapes.make_example(c.seed, 5000 + i, 32)["image"] for i in range(32)])))
  real_sets = frechet.statistics(frechet.pixel_features(np.stack(
      [src.load(i)["image"] for i in range(32)])))
  floor = frechet.frechet_distance(other["mu"], other["sigma"], real_sets["mu"],
                                   real_sets["sigma"])
  assert out2["proxy_fd_pixels"] > 1.5 * floor
  assert out2["proxy_fd_pixels_ref_halves"] == out["proxy_fd_pixels_ref_halves"]   # cached
