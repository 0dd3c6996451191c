"""Sampler: MAR schedule parity, reveal-once, CFG, SAD, determinism, one compiled loop.

Schedule parity is against a literal numpy port of LTH14/mar `MAR.sample_tokens`' masking
(mask_len = floor(L cos(pi/2 (s+1)/N)), clamped to [1, #masked - 1], last step reveals all).
The decoding-loop tests use a tiny random DREAM (identity tokenizer, 'small' condition
encoder, 64 tokens, 4 steps, 3 diffusion steps) so that they run on CPU in about a minute.
"""
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.models.buckets import bucketed
from dream_jax import sampling
from dream_jax.sampling import mar, sad
from dream_jax.sampling import schedule as sl
from dream_jax.tokenizers import first_eot_position

PROMPTS = ["a red circle in the top left", "a large blue square at the bottom"]


# ------------------------------------------------------------------ reference
def reference_decode_masks(L, N, cfg=3.0, seed=0):
  """The reference's per-step predicted positions and linear CFG scale (one image)."""
  order = np.random.default_rng(seed).permutation(L)
  mask = np.ones(L)
  steps, scales = [], []
  for step in range(N):
    mask_ratio = np.cos(math.pi / 2.0 * (step + 1) / N)
    mask_len = np.float32(np.floor(L * mask_ratio))
    mask_len = max(1.0, min(mask.sum() - 1, mask_len))
    mask_next = np.zeros(L)
    mask_next[order[: int(mask_len)]] = 1          # mask_by_order
    if step >= N - 1:
      to_pred = mask.astype(bool)
    else:
      to_pred = np.logical_xor(mask.astype(bool), mask_next.astype(bool))
    mask = mask_next
    steps.append(np.nonzero(to_pred)[0])
    scales.append(1 + (cfg - 1) * (L - mask_len) / L)
  return order, steps, np.asarray(scales)


@pytest.mark.parametrize("L,N", [(256, 64), (64, 16), (16, 32), (5, 5), (1, 1), (7, 1),
                                 (256, 100)])
def test_schedule_matches_reference(L, N):
  _, steps, scales = reference_decode_masks(L, N)
  s = sl.reveal_schedule(L, N)
  np.testing.assert_array_equal(s.revealed, [len(x) for x in steps])
  assert s.revealed.sum() == L and s.masked_after[-1] == 0 and s.masked_before[0] == L
  np.testing.assert_allclose(sl.cfg_scales(s, 3.0, "linear"), scales, rtol=0, atol=1e-12)
  np.testing.assert_allclose(sl.cfg_scales(s, 3.0, "constant"), 3.0)


def test_sad_share_and_step_checks():
  s = sl.reveal_schedule(256, 64)
  t = sl.sad_step_from_share(s, 0.125)
  assert s.revealed_share(t) >= 0.125 > s.revealed_share(t - 1)
  assert 19 <= t <= 22                      # "about step 20 of 64" (docs/DESIGN.md)
  assert sl.sad_step_from_share(s, 1.0) == 64
  for bad in (0, 65, -1):
    with pytest.raises(ValueError, match="outside the decoding schedule"):
      sl.check_sad_step(s, bad)
  with pytest.raises(ValueError):
    sl.sad_step_from_share(s, 0.0)
  # 4 candidates x 3 steps + step 0 once + 12 steps of the winner, of 4 x 16 passes.
  assert sad.sad_cost(4, 4, 16) == pytest.approx((12 + 1 + 12) / 64)


# ----------------------------------------------- loop logic with a fake model
class _CountingModel:
  """Stands in for DreamModel in `MarDecoder`: the decoder's z encodes, per position, the
  visible count this step (channel 0), the position's write count + 1 (channel 1) and the
  encoder's static length (channel 2); the 'head' returns z as the token. After decoding,
  channel 1 counts how often each position was written."""

  def __init__(self, L):
    self.spec = types.SimpleNamespace(seq_len=L, token_dim=3)
    self.encoder_path = "drop"

  def encode_tokens(self, variables, tokens, visible, num_keep=None, count=None, sizes=None,
                    **kw):
    # The static length the real encoder would run at: `num_keep`, or the bucket of
    # `sizes` that `count` selects (the same `bucketed` switch as DreamModel's).
    full = lambda k, v: jnp.full(v.shape, float(k))
    if count is not None:
      keep = bucketed(count, sizes, full, visible)
    else:
      keep = full(-1 if num_keep is None else num_keep, visible)
    return jnp.stack([tokens[..., 1], visible.astype(jnp.float32), keep], -1), visible

  def decode(self, variables, hidden, valid, ctx, mask, positions=None):
    # DreamModel.decode's contract: ctx rows = g conditions per image, z at `positions`.
    vis = jnp.broadcast_to(hidden[..., 1].sum(1, keepdims=True), hidden.shape[:2])
    z = jnp.stack([vis, hidden[..., 0] + 1.0, hidden[..., 2]], -1)
    if positions is not None:
      z = jnp.take_along_axis(z, positions[..., None], axis=1)
    return jnp.concatenate([z] * (ctx.shape[0] // hidden.shape[0]), axis=0)

  def diffusion_sample(self, variables, z, rng, *, temperature, cfg_scale, num_steps):
    return z[: z.shape[0] // 2] if cfg_scale is not None else z


@pytest.mark.parametrize("L,N,guided,buckets", [(64, 16, True, 3), (16, 32, False, 2),
                                                (37, 8, True, 1)])
def test_every_token_revealed_once_at_the_reference_step(L, N, guided, buckets):
  model = _CountingModel(L)
  dec = mar.MarDecoder(model, mar.DecodeOptions(N, "1", cfg_schedule="linear", guided=guided,
                                                encoder_buckets=buckets, head_buckets=buckets))
  b = 3
  state = mar.init_state(jax.random.key(0), b, L, 3)
  rows = 2 * b if guided else b
  cond = mar.Cond(jnp.zeros((rows, 1, 1)), jnp.ones((rows, 1), bool))
  out = jax.jit(lambda st: dec.run({}, st, cond, jax.random.key(1), 1.0, 3.0, 0, N))(state)
  tok = np.asarray(out.tokens)
  np.testing.assert_array_equal(tok[..., 1], 1.0)           # each position written once
  sch = sl.reveal_schedule(L, N)
  for i in range(b):
    order = np.asarray(out.order[i])
    # Positions revealed at step s are exactly the reference's for this order.
    _, ref_steps, _ = reference_decode_masks(L, N)
    ref_order = np.random.default_rng(0).permutation(L)
    remap = {int(p): int(q) for p, q in zip(ref_order, order)}  # same ranks, our positions
    for s in range(N):
      # Steps that reveal nothing leave the visible count unchanged: group by that count.
      same = [q for q in range(N) if sch.visible[q] == sch.visible[s]]
      want = [remap[int(p)] for q in same for p in ref_steps[q]]
      ours = np.nonzero(tok[i, :, 0] == sch.visible[s])[0]
      np.testing.assert_array_equal(np.sort(ours), np.sort(want))
    # The encoder's static length always covers the visible tokens.
    assert (tok[i, :, 2] >= tok[i, :, 0]).all()


# ------------------------------------------------------------ the tiny model
@pytest.fixture(scope="module")
def setup():
  from dream_jax.train.components import Components
  from tests.helpers import sampling_config
  c = sampling_config()
  comp = Components(c)
  model, it = comp.model, comp.image_tokens
  variables = jax.jit(model.init)(jax.random.key(0))
  s = sampling.Sampler(model, c, it, comp.conditioning, comp.tokenize)
  return types.SimpleNamespace(c=c, model=model, it=it, text=comp.conditioning, v=variables,
                               s=s)


@pytest.fixture(scope="module")
def plain(setup):
  return setup.s.sample(setup.v, {}, PROMPTS, jax.random.key(7))


def test_plain_shapes_same_seed_same_images(setup, plain):
  assert plain["images"].shape == (2, 32, 32, 3) and plain["images"].dtype == np.uint8
  again = setup.s.sample(setup.v, {}, PROMPTS, jax.random.key(7))
  np.testing.assert_array_equal(again["images"], plain["images"])
  np.testing.assert_array_equal(again["tokens"], plain["tokens"])
  other = setup.s.sample(setup.v, {}, PROMPTS, jax.random.key(8))
  assert np.abs(other["tokens"] - plain["tokens"]).max() > 1e-3
  assert (np.abs(plain["tokens"]).max(-1) > 0).all()          # every token decoded


def test_one_compiled_loop_without_transfers(setup):
  s = setup.s
  opts = s.options({})
  fn = s.program("plain", opts)
  batch, temp, cfg = s._inputs(PROMPTS, {})
  args = jax.device_put((setup.v, {}, batch, setup.text.empty, jax.random.key(3), temp, cfg))
  text = fn.lower(*args).as_text()
  assert "stablehlo.while" in text
  before = fn._cache_size()
  with jax.transfer_guard("disallow"):
    a = fn(*args)
    b = fn(*args)
    jax.block_until_ready((a, b))
  assert fn._cache_size() == before == 1       # compiled once (by the `plain` fixture)
  np.testing.assert_array_equal(np.asarray(a["images"]), np.asarray(b["images"]))


@pytest.mark.slow
def test_sad_k1_equals_plain_and_decoded_tokens_persist(setup, plain):
  out = setup.s.sample_sad(setup.v, {}, PROMPTS, jax.random.key(7), num_candidates=1,
                           sad_step=2, critic="mean", return_candidates=True)
  np.testing.assert_array_equal(out["images"], plain["images"])
  np.testing.assert_allclose(out["tokens"], plain["tokens"], atol=1e-6)
  np.testing.assert_array_equal(out["winner"], 0)
  # After T steps: exactly the scheduled tokens are decoded, and never changed later.
  sch = sl.reveal_schedule(64, 4)
  cand = out["candidate_tokens"][:, 0]
  decoded = np.abs(cand).max(-1) > 0
  np.testing.assert_array_equal(decoded.sum(1), 64 - sch.masked_after[1])
  np.testing.assert_array_equal(cand[decoded], out["tokens"][decoded])
  assert out["step_scores"].shape == (3, 2, 1)
  np.testing.assert_allclose(out["scores"][:, 0], out["step_scores"][1:, :, 0].mean(0),
                             rtol=1e-5)


@pytest.mark.slow
def test_sad_winner_is_argmax_of_its_own_scores(setup):
  s, m, v = setup.s, setup.model, setup.v
  out = s.sample_sad(v, {}, PROMPTS, jax.random.key(5), return_candidates=True)
  k, t = 3, 2
  assert out["scores"].shape == (2, k) and out["sad_step"] == t
  np.testing.assert_array_equal(out["winner"], out["scores"].argmax(1))
  assert out["candidates"].shape == (2, k, 32, 32, 3)
  # Independent recomputation of the score: the FULL-LENGTH attention-masked encoder on
  # the decoded tokens (masked ones excluded), eval BatchNorm, cosine with the CLIP text.
  cand = jnp.asarray(out["candidate_tokens"]).reshape(2 * k, 64, -1)
  visible = jnp.abs(cand).max(-1) > 0
  hidden, valid = m.encode_tokens(v, cand, visible, train=False)
  emb, _ = m.project(v, hidden, valid)
  ids = jnp.asarray(s.tokenize(PROMPTS)["clip_ids"])
  eot = first_eot_position(np.asarray(ids), setup.text.eot_id)
  temb, _ = m.embed_text(v, ids, jnp.asarray(eot, jnp.int32))
  ref = (emb.reshape(2, k, -1) * temb[:, None]).sum(-1)
  np.testing.assert_allclose(out["scores"], ref, atol=1e-5)
  # Candidates of a prompt share the order: the same positions are decoded at step T.
  vis = np.asarray(visible).reshape(2, k, 64)
  assert (vis == vis[:, :1]).all()
  # The winner's decoded tokens at T are kept in the final image.
  w = out["candidate_tokens"][np.arange(2), out["winner"]]
  dec = np.abs(w).max(-1) > 0
  np.testing.assert_allclose(out["tokens"][dec], w[dec], atol=0)


@pytest.mark.slow
def test_shared_first_step_equals_computing_every_candidate(setup):
  """SAD's step 0 runs the encoder and decoder once per prompt (its K candidates are still
  identical): the same tokens and hook outputs as running all K*P rows."""
  s, v, k = setup.s, setup.v, 3
  dec = mar.MarDecoder(setup.model, s.options({}))
  batch, temp, cfg = s._inputs(PROMPTS, {})
  pc = mar.prompt_cond(s.fns, v, {}, batch, setup.text.empty, dec.opts.guided)
  cond = mar.expand_cond(pc, dec.opts.guided, repeat=k)
  state = mar.init_state(jax.random.key(4), len(PROMPTS), dec.L, dec.C, repeat=k)

  def go(shared):
    hook = lambda c, step, hidden, valid: c.at[step].set((hidden * valid[..., None]).sum((1, 2)))
    carry = jnp.zeros((2, len(PROMPTS) * k))
    return jax.jit(lambda st: dec.run(v, st, cond, jax.random.key(9), temp, cfg, 0, 2,
                                      carry=carry, on_encode=hook, shared_start=shared))(state)

  (a, ha), (b, hb) = go(1), go(k)
  np.testing.assert_allclose(np.asarray(b.tokens), np.asarray(a.tokens), atol=1e-5)
  np.testing.assert_allclose(np.asarray(hb), np.asarray(ha), rtol=1e-5, atol=1e-5)
  tok = np.asarray(b.tokens).reshape(len(PROMPTS), k, dec.L, -1)
  decoded = np.abs(tok).max(-1) > 0
  assert decoded.any() and (decoded == decoded[:, :1]).all()      # the same positions
  assert np.abs(tok - tok[:, :1]).max() > 1e-3                    # but other noise


@pytest.mark.slow
def test_best_of_k_internal_and_external_scorer(setup, plain):
  s = setup.s
  seen = {}

  def scorer(images, texts):
    seen["n"] = (images.shape, len(texts))
    return -images.astype(np.float32).mean(axis=(1, 2, 3))   # prefers dark images

  out = s.best_of_k(setup.v, {}, PROMPTS, jax.random.key(7), num_candidates=2, scorer=scorer)
  assert seen["n"] == ((4, 32, 32, 3), 4)
  np.testing.assert_array_equal(out["winner"], out["external_scores"].argmax(1))
  np.testing.assert_array_equal(out["images"],
                                out["candidates"][np.arange(2), out["winner"]])
  assert out["scores"].shape == (2, 2)


@pytest.mark.slow
def test_cfg_one_equals_the_conditional_sample(setup):
  """cfg=1 skips the unconditional branch; running the guided branch at scale 1 gives the
  same sample (guided eps = u + 1 * (c - u) = c; the halves share x_t and the noise)."""
  s = setup.s
  plain_c1 = s.sample(setup.v, {}, PROMPTS[:1], jax.random.key(2), cfg=1.0)
  dec = mar.MarDecoder(setup.model, s.options({"cfg": 3.0}))      # guided program
  assert dec.opts.guided and not s.options({"cfg": 1.0}).guided
  fn = jax.jit(functools.partial(mar.decode_plain, dec, s.fns))
  batch, temp, _ = s._inputs(PROMPTS[:1], {})
  guided = fn(setup.v, {}, batch, setup.text.empty, jax.random.key(2), temp, jnp.float32(1.0))
  np.testing.assert_allclose(np.asarray(guided["tokens"]), plain_c1["tokens"], rtol=1e-5)


def test_clear_errors(setup):
  s, v = setup.s, setup.v
  with pytest.raises(ValueError, match="empty"):
    s.sample(v, {}, [], jax.random.key(0))
  with pytest.raises(ValueError, match="K=0"):
    s.sample_sad(v, {}, PROMPTS, jax.random.key(0), num_candidates=0)
  with pytest.raises(ValueError, match="outside the decoding schedule"):
    s.sample_sad(v, {}, PROMPTS, jax.random.key(0), sad_step=5)
  with pytest.raises(TypeError, match="unknown sampling overrides"):
    s.sample(v, {}, PROMPTS, jax.random.key(0), num_candidates=3)
