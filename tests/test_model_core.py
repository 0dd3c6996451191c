"""Model-core invariants: tokens, masking, warmup, encoder paths, no leak, losses, sharding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import common
from dream_jax import losses, masking
from dream_jax.models.patchify import patchify, unpatchify
from tests.helpers import model_config as tiny_config


@pytest.fixture(scope="module")
def tiny():
  from dream_jax.train.components import build_model
  cfg = tiny_config()
  model = build_model(cfg)
  return cfg, model, model.init(jax.random.key(0))


# ------------------------------------------------------------------ tokens
@pytest.mark.parametrize("p,c,h", [(2, 4, 8), (2, 3, 16), (4, 3, 16), (1, 4, 4)])
def test_patchify_round_trip(p, c, h):
  x = jax.random.normal(jax.random.key(0), (3, h, h, c))
  t = patchify(x, p)
  assert t.shape == (3, (h // p) ** 2, c * p * p)
  np.testing.assert_array_equal(unpatchify(t, p, h // p, c), x)


def test_patchify_channel_major_layout():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  t = np.asarray(patchify(jnp.asarray(x), 2))
  # token 1 = patch row 0, col 1; feature channel*4 + dy*2 + dx
  for ch in range(3):
    for dy in range(2):
      for dx in range(2):
        assert t[1, 1, ch * 4 + dy * 2 + dx] == x[1, dy, 2 + dx, ch]


# ----------------------------------------------------------------- masking
def test_exact_mask_counts_and_groups():
  cfg = ConfigDict(dict(kind="truncnorm", std=0.45, min=0.0, max=1.0, group_size=4))
  m = masking.sample_masks(jax.random.key(3), 32, 64, 0.6, cfg)
  counts = np.asarray(m["mask"].sum(1))
  r = np.asarray(m["ratio"], np.float32)
  np.testing.assert_array_equal(counts, np.ceil(r * np.float32(64)).astype(int))
  # one ratio per fixed slice of group_size samples
  np.testing.assert_array_equal(r.reshape(8, 4), np.repeat(np.asarray(m["ratio_group"]), 4)
                                .reshape(8, 4))
  # masked positions are the first n entries of each order
  orders, mask = np.asarray(m["orders"]), np.asarray(m["mask"])
  for b in range(32):
    assert set(orders[b, :counts[b]]) == set(np.nonzero(mask[b])[0])
    assert sorted(orders[b]) == list(range(64))


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 1 / 3, 0.5, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("seq_len", [7, 37, 64, 256])
def test_static_visible_count_is_every_masks_count(ratio, seq_len):
  cfg = ConfigDict(dict(kind="fixed", fixed_ratio=ratio, group_size=2))
  m = masking.sample_masks(jax.random.key(0), 4, seq_len, 0.0, cfg)
  visible = seq_len - np.asarray(m["mask"]).sum(1)
  np.testing.assert_array_equal(visible, masking.static_visible_count(cfg, seq_len))
  none = ConfigDict(dict(kind="none", group_size=2))
  assert masking.static_visible_count(none, seq_len) == seq_len
  varying = ConfigDict(dict(kind="truncnorm", std=0.25, min=0.0, max=1.0, group_size=2))
  assert masking.static_visible_count(varying, seq_len) is None


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_fixed_ratio_static_lengths_equal_the_bucket_switch(ratio, monkeypatch):
  """With a fixed mask ratio the objective runs the encoder and the diffusion head at static
  lengths; loss, metrics and gradients equal those of the bucketed (lax.switch) path."""
  from dream_jax import objective
  from dream_jax.train.components import build_model
  cfg = tiny_config()
  cfg.masking.update(kind="fixed", fixed_ratio=ratio)
  cfg.model.update(encoder_buckets=4, diffusion_buckets=4)
  model = build_model(cfg)
  v = model.init(jax.random.key(0))
  obj, batch = _objective_and_batch(cfg, model)
  f = jax.jit(jax.value_and_grad(
      lambda p: obj(p, v["batch_stats"], {}, batch, jax.random.key(2), 0.0), has_aux=True))
  (l_static, (_, m_static)), g_static = f(v["params"])
  text = f.lower(v["params"]).as_text()
  monkeypatch.setattr(objective.masking, "static_visible_count", lambda *a: None)
  f2 = jax.jit(jax.value_and_grad(
      lambda p: obj(p, v["batch_stats"], {}, batch, jax.random.key(2), 0.0), has_aux=True))
  (l_sw, (_, m_sw)), g_sw = f2(v["params"])
  # The text tower's prefix switch stays (end-of-text positions are data); the encoder's
  # and the head's (forward and backward) are gone.
  cases = lambda t: t.count("stablehlo.case")
  assert cases(f2.lower(v["params"]).as_text()) >= cases(text) + 4
  np.testing.assert_allclose(l_static, l_sw, rtol=1e-6)
  np.testing.assert_allclose(m_static["loss_diffusion"], m_sw["loss_diffusion"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_static), jax.tree.leaves(g_sw)):
    np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("center", [0.0, 0.3, 0.5, 1.0])
def test_truncated_normal_moments(center):
  x = masking.truncated_normal(jax.random.key(1), (200_000,), center, 0.45, 0.0, 1.0)
  x = np.asarray(x, np.float64)
  assert x.min() >= 0.0 and x.max() <= 1.0
  expect = float(masking.truncated_normal_mean(center, 0.45, 0.0, 1.0))
  se = x.std() / math.sqrt(x.size)
  assert abs(x.mean() - expect) < 5 * se + 1e-4, (x.mean(), expect)
  # closed-form check of the closed form itself at the symmetric centre
  if center == 0.5:
    assert abs(expect - 0.5) < 1e-6


def test_fluid_bounds():
  x = masking.truncated_normal(jax.random.key(2), (10_000,), 1.0, 0.25, 0.7, 1.0)
  assert float(x.min()) >= 0.7 and float(x.max()) <= 1.0


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_warmup_endpoints_and_shape(shape):
  from dream_jax.train.schedule import mask_center_schedule
  cfg = ConfigDict(dict(total_steps=400, masking=dict(
      center_start=0.0, center_end=1.0, warmup_start=0.0, warmup_end=0.75, shape=shape)))
  sched = mask_center_schedule(cfg)
  f = lambda p: float(sched(jnp.asarray(round(p * 400), jnp.int32)))
  assert f(0.0) == 0.0 and f(0.75) == 1.0 and f(1.0) == 1.0
  assert abs(f(0.375) - 0.5) < 1e-6  # midpoint of both shapes
  vals = [f(p) for p in np.linspace(0, 1, 41)]
  assert all(b >= a for a, b in zip(vals, vals[1:]))
  if shape == "linear":
    assert abs(f(0.15) - 0.2) < 1e-6
  else:
    assert abs(f(0.15) - 0.5 * (1 - math.cos(math.pi * 0.2))) < 1e-6


def test_nowarmup_recipe_is_constant():
  from dream_jax.train.schedule import mask_center_schedule
  c = common.base_config()
  common.apply_recipe(c, "nowarmup")
  sched = mask_center_schedule(c)
  assert float(sched(0)) == 1.0 and float(sched(c.total_steps // 2)) == 1.0


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("rate,bdims", [(0.1, ()), (0.5, (1,)), (0.0, ()), (1.0, ())])
def test_dropout_is_flax_dropout_with_its_mask_apart(rate, bdims):
  """layers.Dropout draws the mask flax's nn.Dropout draws (same auto-names, same rng
  stream), so values and gradients are bitwise nn.Dropout's; and its mask sits behind an
  optimization barrier, which is what keeps XLA:TPU from fusing the threefry bits into the
  attention's p.v matmul (docs/scaling.md)."""
  import flax.linen as nn
  from dream_jax.models import layers

  class Two(nn.Module):   # two dropouts in one scope: the second's name depends on the first
    cls: type

    @nn.compact
    def __call__(self, x):
      a = self.cls(rate, broadcast_dims=bdims)(x, deterministic=False)
      return 2.0 * a + self.cls(0.3)(x, deterministic=False)

  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 16))
  rngs = {"dropout": jax.random.PRNGKey(3)}
  ours = lambda x: Two(layers.Dropout).apply({}, x, rngs=rngs)
  ref = lambda x: Two(nn.Dropout).apply({}, x, rngs=rngs)
  np.testing.assert_array_equal(jax.jit(ours)(x), ref(x))
  np.testing.assert_array_equal(jax.grad(lambda x: ours(x).sum())(x),
                                jax.grad(lambda x: ref(x).sum())(x))
  masks = 1 if rate in (0.0, 1.0) else 2    # rate 0 / 1 draw no mask
  assert jax.jit(ours).lower(x).as_text().count("optimization_barrier") == masks
  assert "optimization_barrier" not in jax.jit(ref).lower(x).as_text()


# ---------------------------------------------------------------- encoder
def _inputs(model, b=6, seed=0):
  s = model.spec
  k1, k2 = jax.random.split(jax.random.key(seed))
  tokens = jax.random.normal(k1, (b, s.seq_len, s.token_dim))
  # different visible counts per sample, including 0 and all
  n_vis = jnp.array([0, 1, 5, 17, 40, 64][:b])
  orders = masking.random_orders(k2, b, s.seq_len)
  visible = ~masking.mask_from_orders(orders, s.seq_len - n_vis)
  return tokens, visible


def test_encoder_paths_agree(tiny):
  from dream_jax.models.dream import DREAM
  _, model, v = tiny
  tokens, visible = _inputs(model)
  h_full, valid_full = model._apply(v, tokens, visible, None, True, method=DREAM.encode)
  # num_keep must cover the largest visible count: 64 for all six samples, 40 for the first 5
  for keep, n in ((64, 6), (40, 5), (50, 5)):
    h_drop, valid_drop = model.encode_tokens(v, tokens[:n], visible[:n], num_keep=keep)
    np.testing.assert_array_equal(valid_drop, valid_full[:n])
    np.testing.assert_allclose(h_drop, h_full[:n], atol=2e-5, rtol=2e-5)
  e_full, _ = model.project(v, h_full, valid_full)
  e_drop, _ = model.project(v, *model.encode_tokens(v, tokens, visible, num_keep=64))
  np.testing.assert_allclose(e_drop, e_full, atol=2e-5)


def test_bucketed_encoder_matches_full_length():
  from dream_jax.models.api import bucket_sizes
  from dream_jax.train.components import build_model
  assert bucket_sizes(64, 4) == (16, 32, 48, 64)
  m4 = build_model(tiny_config(encoder_buckets=4))
  m_full = build_model(tiny_config(encoder_path="masked"))
  v = m4.init(jax.random.key(0))
  tokens, visible = _inputs(m4)
  visible = visible.at[:, 20:].set(False)   # max 20 visible -> bucket 32
  a = jax.jit(lambda t, vis: m4.encode_image(v, t, vis).embedding)(tokens, visible)
  b = m_full.encode_image(v, tokens, visible).embedding
  np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("path", ["drop", "masked"])
def test_no_leak_from_masked_tokens(tiny, path):
  _, model, v = tiny
  tokens, visible = _inputs(model)
  keep = 64 if path == "drop" else None
  other = jnp.where(visible[..., None], tokens, 100.0 * jax.random.normal(
      jax.random.key(9), tokens.shape))
  from dream_jax.models.dream import DREAM
  enc = lambda t: (model.encode_tokens(v, t, visible, num_keep=keep) if keep else
                   model._apply(v, t, visible, None, True, method=DREAM.encode))
  h1, val = enc(tokens)
  h2, _ = enc(other)
  np.testing.assert_array_equal(np.asarray(h1), np.asarray(h2))
  e1, _ = model.project(v, h1, val)
  e2, _ = model.project(v, h2, val)
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
  # ... and the decoder's z does not depend on them either
  ctx = model.condition(v, dict(ids=jnp.ones((6, 16), jnp.int32), mask=jnp.ones((6, 16), bool)))
  np.testing.assert_array_equal(np.asarray(model.decode(v, h1, val, ctx)),
                                np.asarray(model.decode(v, h2, val, ctx)))


@pytest.mark.parametrize("layout", ["unrolled", "remat", "scanned"])
def test_decode_condition_rows_and_positions_equal_the_full_decoder(layout):
  """The sampler's decoder call: B images with g = 2 conditions each (CFG) and z only at
  some positions. Reference: the training call, every row given its own copy of the
  image's encoder output and all L positions decoded, then the rows picked in numpy."""
  from dream_jax.train.components import build_model
  kw = dict(remat="full") if layout == "remat" else {}
  if layout == "scanned":
    kw["scan_layers"] = True
  model = build_model(tiny_config(dec_depth=3, **kw))
  v = model.init(jax.random.key(1))
  b, s = 3, model.spec
  tokens, visible = _inputs(model, b=b)
  hidden, valid = model.encode_tokens(v, tokens, visible, num_keep=s.seq_len)
  ids = jax.random.randint(jax.random.key(2), (2 * b, 16), 0, 100)
  cmask = jnp.arange(16)[None] < jnp.array([16, 9, 4, 1, 16, 7])[:, None]
  ctx = model.condition(v, dict(ids=ids, mask=cmask))                    # [2B, Lc, D]
  two = lambda a: jnp.concatenate([a, a], axis=0)
  full = np.asarray(model.decode(v, two(hidden), two(valid), ctx, cmask))  # [2B, L, D]
  pos = np.stack([np.random.default_rng(i).choice(s.seq_len, 5, replace=False)
                  for i in range(b)]).astype(np.int32)
  pos[0, -1] = pos[0, -2]                                              # a repeated position
  got = np.asarray(model.decode(v, hidden, valid, ctx, cmask, positions=jnp.asarray(pos)))
  want = full[np.arange(2 * b)[:, None], np.concatenate([pos, pos])]
  assert got.shape == (2 * b, 5, s.dec_width)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Without positions: every token, the same as the row-per-condition call.
  np.testing.assert_allclose(np.asarray(model.decode(v, hidden, valid, ctx, cmask)), full,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="not a multiple"):
    model.decode(v, hidden[:2], valid[:2], ctx[:3], cmask[:3])


def test_diffusion_head_only_on_counting_tokens_is_exact():
  """Bucketed head on counting rows == head on every row then masked: loss AND grads."""
  from dream_jax.train.components import build_model
  m_b = build_model(tiny_config(diffusion_buckets=4))
  m_1 = build_model(tiny_config(diffusion_buckets=1))
  v = m_b.init(jax.random.key(0))
  b, l = 4, m_b.spec.seq_len
  z = jax.random.normal(jax.random.key(1), (b, l, m_b.spec.dec_width))
  x = jax.random.normal(jax.random.key(2), (b, l, m_b.spec.token_dim))
  w = (jax.random.uniform(jax.random.key(3), (b, l)) < 0.2) / 50.0
  def f(model):
    return jax.jit(jax.value_and_grad(
        lambda p, z: model.diffusion_loss({"params": p}, z, x, w, jax.random.key(4))[0],
        argnums=(0, 1)))(v["params"], z)
  (lb, gb), (l1, g1) = f(m_b), f(m_1)
  np.testing.assert_allclose(lb, l1, rtol=1e-6)
  for a, c in zip(jax.tree.leaves(gb), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, c, atol=1e-6, rtol=1e-5)


def _np_clip(img, txt, scale, c):
  logits = scale * img @ txt.T
  def ce_rows(lg):
    lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
    return lse - np.diag(lg)
  i2t = ce_rows(logits)
  t2i = ce_rows(np.where(c[:, None], logits, -1e9).T)
  per = 0.5 * (i2t + t2i)
  return per[c].sum() / max(c.sum(), 1)


def test_clip_loss_filters_against_numpy():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(6, 8)); img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt = rng.normal(size=(6, 8)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  for c in ([1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1]):
    c = np.array(c, bool)
    loss, frac = losses.clip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                                  14.0, jnp.asarray(c))
    np.testing.assert_allclose(loss, _np_clip(img, txt, 14.0, c), rtol=1e-5)
    assert float(frac) == pytest.approx(c.mean(), rel=1e-6)


def test_nothing_contributes_is_zero_with_finite_gradients():
  img = jax.random.normal(jax.random.key(0), (4, 8))
  txt = jax.random.normal(jax.random.key(1), (4, 8))
  f = lambda i, t: losses.clip_loss(i, t, 10.0, jnp.zeros((4,), bool))[0]
  val, grads = jax.value_and_grad(f, argnums=(0, 1))(img, txt)
  assert float(val) == 0.0
  assert all(bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) == 0 for g in grads)
  # diffusion: no masked token anywhere (the CLIP-only recipe)
  w, gate = losses.diffusion_token_weights(jnp.zeros((8, 16), bool), 4, 0.5)
  assert float(w.sum()) == 0.0 and not bool(gate.any())


def test_diffusion_group_gate_and_denominator():
  # 3 groups of 2 samples x 4 tokens. ratios: g0 0.75 (on), g1 0.25 (off), g2 0.5 (on: not < 0.5)
  mask = np.zeros((6, 4), bool)
  mask[0, :3] = mask[1, :3] = True
  mask[2, :1] = mask[3, :1] = True
  mask[4, :2] = mask[5, :2] = True
  w, gate = losses.diffusion_token_weights(jnp.asarray(mask), 2, 0.5)
  np.testing.assert_array_equal(gate, [True, False, True])
  per_tok = np.arange(24, dtype=np.float32).reshape(6, 4)
  expect = (per_tok[:2][mask[:2]].mean() + 0.0 + per_tok[4:][mask[4:]].mean()) / 3
  np.testing.assert_allclose((np.asarray(w) * per_tok).sum(), expect, rtol=1e-6)


def _objective_and_batch(cfg, model):
  """A DreamObjective over the word tokenizer and a batch of 8 captioned random images."""
  from dream_jax.conditioning import Conditioning
  from dream_jax.image_tokens import ImageTokens
  from dream_jax.objective import DreamObjective
  from dream_jax.tokenizers.word import WordTokenizer
  from dream_jax.data.shapes import VOCAB as words   # the runlocal configs' vocabulary
  tok = WordTokenizer(words, cfg.text.context_length)
  u = tok.encode([""])
  text = Conditioning(model, eot_id=tok.eot_id, caption_drop=cfg.loss.caption_drop,
                      empty=dict(clip_ids=u, cond_ids=u, cond_mask=tok.padding_mask(u)))
  obj = DreamObjective(model, cfg, conditioning=text, image_tokens=ImageTokens(cfg))
  ids = tok.encode([f"a {words[i % len(words)]} {words[(3 * i) % len(words)]}"
                    for i in range(8)])
  batch = dict(image=jax.random.uniform(jax.random.key(1), (8, 16, 16, 3), minval=-1, maxval=1),
               clip_ids=jnp.asarray(ids), cond_ids=jnp.asarray(ids),
               cond_mask=jnp.asarray(tok.padding_mask(ids)))
  return obj, batch


@pytest.mark.slow
def test_objective_finite_gradients_in_edge_recipes():
  """CLIP-only (nothing masked) and Fluid (nothing contributes to CLIP): finite grads."""
  from dream_jax.train.components import build_model
  for recipe in ("clip", "fluid"):
    cfg = tiny_config()
    common.apply_recipe(cfg, recipe)
    if recipe == "fluid":
      cfg.loss.w_contrastive = 0.005  # keep the term: every sample is filtered out
    model = build_model(cfg)
    v = model.init(jax.random.key(0))
    obj, batch = _objective_and_batch(cfg, model)
    (loss, (_, met)), g = jax.jit(jax.value_and_grad(
        lambda p: obj(p, v["batch_stats"], {}, batch, jax.random.key(2), 1.0),
        has_aux=True))(v["params"])
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g)), recipe
    if recipe == "fluid":
      assert float(met["share_contrastive"]) == 0.0


# --------------------------------------------------------------- sharding
@pytest.mark.slow
def test_loss_and_grads_equal_on_8_devices_and_one():
  """Global batch sharded over a 4x2 (data, fsdp) mesh == one device: loss, grads, BN stats."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  from dream_jax.train.components import build_model
  assert len(jax.devices()) >= 8
  cfg = tiny_config()
  model = build_model(cfg)
  v = model.init(jax.random.key(0))
  obj, batch = _objective_and_batch(cfg, model)
  f = jax.value_and_grad(lambda p, bs, b: obj(p, bs, {}, b, jax.random.key(2), 0.6),
                         has_aux=True)
  (l1, (s1, m1)), g1 = jax.jit(f)(v["params"], v["batch_stats"], batch)
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
  with jax.set_mesh(mesh):
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    sb = jax.tree.map(shard, batch)
    # parameters FSDP-sharded along their first dim when divisible
    def pshard(x):
      spec = P("fsdp") if x.ndim >= 1 and x.shape[0] % 2 == 0 else P()
      return jax.device_put(x, NamedSharding(mesh, spec))
    sp = jax.tree.map(pshard, v["params"])
    (l8, (s8, m8)), g8 = jax.jit(f)(sp, v["batch_stats"], sb)
  np.testing.assert_allclose(l8, l1, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=2e-4)
  for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
  # BatchNorm statistics are over the GLOBAL batch: they moved from their init values
  assert float(jnp.abs(s1["image_projection"]["bn1"]["mean"]).max()) > 0


# ----------------------------------------------------------------- configs
@pytest.mark.parametrize("key,value,needle", [
    ("batch_size", 10, "batch_size"),
    ("sampling.sad_step", 99, "sampling.sad_step"),
    ("model.heads", 5, "model.heads"),
    ("masking.kind", "gauss", "masking.kind"),
])
def test_config_errors_name_the_key(key, value, needle):
  c = tiny_config()
  node = c
  parts = key.split(".")
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = value
  with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
    common.validate(c)


def test_recipes():
  for name in common.RECIPES:
    c = common.base_config()
    common.apply_recipe(c, name)
    common.validate(c)
  c = common.base_config(); common.apply_recipe(c, "fluid")
  assert (c.masking.std, c.masking.min, c.loss.w_contrastive) == (0.25, 0.7, 0.0)
  c = common.base_config(); common.apply_recipe(c, "clip")
  assert c.masking.kind == "none" and c.loss.w_diffusion == 0.0


def test_weight_decay_mask_follows_the_reference_by_meaning():
  from dream_jax.train.components import build_model
  from dream_jax.train.optim import weight_decay_mask
  cfg = tiny_config()
  model = build_model(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0))["params"]
  mask = weight_decay_mask(shapes, cfg)
  flat = {"/".join(k.key for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  for name in ("logit_scale", "buffer_embed", "encoder_pos_embed", "mask_token",
               "text_tower/token_embedding", "text_tower/positional_embedding",
               "encoder_blocks_0/attn/qkv/kernel", "text_tower/text_projection"):
    assert flat[name], name
  for name in ("encoder_blocks_0/attn/qkv/bias", "encoder_norm/scale",
               "image_projection/bn1/scale", "diffloss/input_proj/kernel",
               "diffloss/res_blocks_0/mlp_0/kernel"):
    assert not flat[name], name
  cfg.optim.decay_logit_scale = False
  cfg.optim.decay_embeddings = False
  flat = {"/".join(k.key for k in p): v for p, v in
          jax.tree_util.tree_leaves_with_path(weight_decay_mask(shapes, cfg))}
  assert not flat["logit_scale"] and not flat["buffer_embed"]
