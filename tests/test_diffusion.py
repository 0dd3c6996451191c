"""Diffusion process and MAR diffusion head: parity with the official fixtures, and invariants.

Fixtures: tests/fixtures/official_tiny (README sections "Diffusion head", "Diffusion
process", "CFG", "Reproducibility and tolerances"). The suggested comparison is
max|ours - ref| <= 1e-5 * max|ref| per array (absolute 1e-6 for all-zero arrays), applied per
timestep slice for the p_mean_variance arrays, whose scale spans 7e4 (t=49) down to O(1).
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from dream_jax.diffusion.gaussian import GaussianDiffusion, space_timesteps
from dream_jax.models.diffloss import DiffLoss, sample_tokens
from dream_jax.models.diffusion_head import (SimpleMLPAdaLN, apply_with_cfg,
                                             head_params_from_torch, timestep_embedding,
                                             timestep_frequencies)
from tests.helpers import FIXTURES

REL = 1e-5
C, W, DEPTH, N = 16, 64, 2, 64


def assert_close(ours, ref, rel=REL, what=""):
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  scale = np.abs(ref).max()
  tol = rel * scale if scale > 0 else 1e-6
  dev = np.abs(ours - ref).max()
  assert dev <= tol, f"{what}: max dev {dev:.3e} > {tol:.3e} (max|ref| {scale:.3e})"


@pytest.fixture(scope="module")
def fx():
  names = ["diffusion", "inputs", "eval_outputs", "weights", "debug_intermediates"]
  return {n: load_file(os.path.join(FIXTURES, f"{n}.safetensors")) for n in names}


@pytest.fixture(scope="module")
def train_diffusion():
  return GaussianDiffusion.create("", "cosine", 1000)


@pytest.fixture(scope="module")
def gen_diffusion():
  return GaussianDiffusion.create("50", "cosine", 1000)


@pytest.fixture(scope="module")
def head():
  return SimpleMLPAdaLN(in_channels=C, width=W, depth=DEPTH)


@pytest.fixture(scope="module")
def head_params(fx):
  return jax.tree.map(jnp.asarray, head_params_from_torch(fx["weights"]))


@pytest.fixture(scope="module")
def head_fn(head):
  return jax.jit(head.apply)


@pytest.fixture(scope="module")
def cfg_fn(head):
  return jax.jit(functools.partial(head.apply, method=SimpleMLPAdaLN.forward_with_cfg))


def _z(fx, case, uncond=False):
  key = f"{case}/decoder_z_uncond" if uncond else f"{case}/decoder_z"
  return fx["eval_outputs"][key].reshape(N, -1)


def _x0(fx):
  return fx["eval_outputs"]["patchified_tokens"].reshape(N, C)


# ---------------------------------------------------------------------------------------------
# 1-2. Schedules and respacing.
# ---------------------------------------------------------------------------------------------

def test_schedule_tables_match_reference(fx, train_diffusion, gen_diffusion):
  d = fx["diffusion"]
  pairs = {
      "train_betas": train_diffusion.betas,
      "train_alphas_cumprod": train_diffusion.alphas_cumprod,
      "gen_betas": gen_diffusion.betas,
      "gen_alphas_cumprod": gen_diffusion.alphas_cumprod,
      "gen_posterior_variance": gen_diffusion.posterior_variance,
      "gen_posterior_log_variance_clipped": gen_diffusion.posterior_log_variance_clipped,
  }
  for name, ours in pairs.items():
    ref = d[f"schedule/{name}"]
    assert ours.dtype == np.float64 and ref.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0, err_msg=name)
  np.testing.assert_array_equal(gen_diffusion.timestep_map, d["schedule/gen_timestep_map"])
  np.testing.assert_array_equal(train_diffusion.timestep_map, np.arange(1000))
  # Betas clipped at 0.999, so the chain never reaches alpha-bar 0.
  assert train_diffusion.betas.max() == 0.999
  assert 1e-9 < train_diffusion.alphas_cumprod[-1] < 1e-8


def test_linear_schedule():
  d = GaussianDiffusion.create("", "linear", 1000)
  np.testing.assert_allclose(d.betas[[0, -1]], [1e-4, 0.02], rtol=1e-12)


def test_space_timesteps_rule():
  s100 = space_timesteps(1000, "100")
  assert len(s100) == 100 and s100[:8] == [0, 10, 20, 30, 40, 50, 61, 71] and s100[-1] == 999
  s50 = space_timesteps(1000, "50")
  assert len(s50) == 50 and s50[:5] == [0, 20, 41, 61, 82] and s50[-1] == 999
  assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
  assert space_timesteps(1000, [1000]) == list(range(1000))
  assert space_timesteps(300, "10,15,20")[:3] == [0, 11, 22]
  with pytest.raises(ValueError):
    space_timesteps(10, "20")


# ---------------------------------------------------------------------------------------------
# 3-4. Timestep embedding and head forward.
# ---------------------------------------------------------------------------------------------

def test_timestep_embedding(fx):
  d, t = fx["diffusion"], fx["inputs"]["diff_t"]
  ref = d["timestep_frequency_embedding"]
  ours = timestep_embedding(jnp.asarray(t, jnp.int32), 256)
  assert ours.dtype == jnp.float32 and ours.shape == (N, 256)
  # Torch's float32 exp is 1 ulp off on a few frequencies; at t ~ 1000 that is ~6e-5.
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  ulps = timestep_frequencies(256).view(np.int32) - d["timestep_frequencies"].view(np.int32)
  assert np.abs(ulps).max() <= 1
  exact = timestep_embedding(jnp.asarray(t, jnp.int32), 256, freqs=d["timestep_frequencies"])
  np.testing.assert_allclose(exact, ref, atol=1e-6, rtol=0)


def test_head_param_conversion_covers_tree(fx, head, head_params):
  n_keys = sum(k.startswith("diffloss.net.") for k in fx["weights"])
  assert len(jax.tree.leaves(head_params)) == n_keys
  init = head.init(jax.random.key(0), jnp.zeros((2, C)), jnp.zeros((2,), jnp.int32),
                   jnp.zeros((2, W)))
  shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)
  assert shapes(init) == shapes(head_params)


@pytest.mark.parametrize("case", ["r050", "r0875"])
def test_head_output(fx, head_fn, head_params, case):
  d = fx["diffusion"]
  t = jnp.asarray(fx["inputs"]["diff_t"], jnp.int32)
  out = head_fn(head_params, d[f"{case}/x_t"], t, _z(fx, case))
  assert out.dtype == jnp.float32 and out.shape == (N, 2 * C)
  assert_close(out, d[f"{case}/mlp_out"], what=f"{case}/mlp_out")


def test_head_debug_intermediates(fx, head, head_params):
  d, dbg = fx["diffusion"], fx["debug_intermediates"]
  t = jnp.asarray(fx["inputs"]["diff_t"], jnp.int32)
  _, state = head.apply(head_params, d["r050/x_t"], t, _z(fx, "r050"),
                        capture_intermediates=True)
  inter = state["intermediates"]
  ours = {
      "input_proj_out": inter["input_proj"]["__call__"][0],
      "time_embed_out": inter["time_embed_2"]["__call__"][0],
      "cond_embed_out": inter["cond_embed"]["__call__"][0],
      "res_block0_out": inter["res_blocks_0"]["__call__"][0],
      "res_block1_out": inter["res_blocks_1"]["__call__"][0],
  }
  for name, value in ours.items():
    assert_close(value, dbg[f"r050/diffusion_head/{name}"], what=name)


# ---------------------------------------------------------------------------------------------
# 5. q_sample and training losses.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["r050", "r0875"])
@pytest.mark.parametrize("edge", [False, True])
def test_training_losses(fx, train_diffusion, head_fn, head_params, case, edge):
  d, inp = fx["diffusion"], fx["inputs"]
  t = jnp.asarray(inp["diff_t_edge" if edge else "diff_t"], jnp.int32)
  x0, noise = _x0(fx), inp["diff_noise"]
  x_t = train_diffusion.q_sample(x0, t, noise)
  if not edge:
    assert_close(x_t, d[f"{case}/x_t"], what=f"{case}/x_t")
  model_out = head_fn(head_params, x_t, train_diffusion.model_timesteps(t), _z(fx, case))
  terms = train_diffusion.training_losses(model_out, x0, x_t, t, noise)
  prefix = f"{case}/edge_t/terms_" if edge else f"{case}/terms_"
  for name in ("mse", "vb", "loss"):
    assert terms[name].shape == (N,)
    assert_close(terms[name], d[prefix + name], what=prefix + name)
  if not edge:
    # MAR loss: masked mean of the per-token loss (the fixture's mask for this case).
    mask = inp[f"mask_{case}"].reshape(N)
    mar = float(jnp.sum(terms["loss"] * mask) / jnp.sum(mask))
    np.testing.assert_allclose(mar, d[f"{case}/mar_loss"], rtol=REL)


# ---------------------------------------------------------------------------------------------
# 6. p_mean_variance, with and without CFG, per timestep slice.
# ---------------------------------------------------------------------------------------------

def test_p_mean_variance(fx, gen_diffusion, head_fn, cfg_fn, head_params):
  d, inp = fx["diffusion"], fx["inputs"]
  x = inp["pmv_x"]
  z, zu = _z(fx, "r050"), _z(fx, "r050", uncond=True)
  x2, z2 = np.concatenate([x, x]), np.concatenate([z, zu])
  for j, step in enumerate(inp["pmv_timesteps"]):
    t = jnp.full((N,), step, jnp.int32)
    t2 = jnp.full((2 * N,), step, jnp.int32)
    out = head_fn(head_params, x, gen_diffusion.model_timesteps(t), z)
    out_u = head_fn(head_params, x, gen_diffusion.model_timesteps(t), zu)
    out_cfg = cfg_fn(head_params, x2, gen_diffusion.model_timesteps(t2), z2, 2.0)
    assert_close(out, d["pmv/model_output"][j], what=f"pmv/model_output[{step}]")
    assert_close(out_u, d["pmv/model_output_uncond"][j], what=f"model_output_uncond[{step}]")
    assert_close(out_cfg, d["pmv_cfg/model_output"][j], what=f"pmv_cfg/model_output[{step}]")
    pmv = gen_diffusion.p_mean_variance(out, x, t)
    pmv_cfg = gen_diffusion.p_mean_variance(out_cfg, x2, t2)
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
      assert_close(pmv[name], d[f"pmv/{name}"][j], what=f"pmv/{name}[{step}]")
      assert_close(pmv_cfg[name], d[f"pmv_cfg/{name}"][j], what=f"pmv_cfg/{name}[{step}]")
    # CFG: the guided eps (hence the mean) is shared; the variance values are not guided.
    np.testing.assert_array_equal(pmv_cfg["mean"][:N], pmv_cfg["mean"][N:])
    np.testing.assert_array_equal(out_cfg[N:, C:], out_u[:, C:])


# ---------------------------------------------------------------------------------------------
# 7. Invariants.
# ---------------------------------------------------------------------------------------------

def test_cfg_scale_one_is_conditional(fx, head_fn, cfg_fn, head_params):
  x = fx["inputs"]["pmv_x"]
  z, zu = _z(fx, "r050"), _z(fx, "r050", uncond=True)
  t = jnp.full((2 * N,), 500, jnp.int32)
  # The second half of x is ignored by the guided head; garbage there must not matter.
  out = cfg_fn(head_params, np.concatenate([x, x + 100.0]), t, np.concatenate([z, zu]), 1.0)
  cond = head_fn(head_params, x, t[:N], z)
  np.testing.assert_allclose(out[:N], cond, rtol=0, atol=1e-6)
  np.testing.assert_allclose(out[N:, :C], cond[:, :C], rtol=0, atol=1e-6)


def test_p_sample_noise_rules(fx, gen_diffusion, head_fn, head_params):
  x, z = fx["inputs"]["pmv_x"], _z(fx, "r050")
  noise = jax.random.normal(jax.random.key(1), x.shape)
  for step in (0, 10):
    t = jnp.full((N,), step, jnp.int32)
    out = head_fn(head_params, x, gen_diffusion.model_timesteps(t), z)
    mean = gen_diffusion.p_mean_variance(out, x, t)["mean"]
    cold = gen_diffusion.p_sample(out, x, t, noise, temperature=0.0)["sample"]
    np.testing.assert_array_equal(cold, mean)  # temperature 0: the mean, no noise
    warm = gen_diffusion.p_sample(out, x, t, noise, temperature=1.0)["sample"]
    if step == 0:
      np.testing.assert_array_equal(warm, mean)  # the last step adds no noise
    else:
      assert np.abs(np.asarray(warm - mean)).min() > 0


def test_p_sample_loop_equals_the_step_by_step_chain(fx, head, head_params):
  """The loop draws every step's noise up front; the chain it must equal, written out in
  Python: x_T given, then for i = T-1..0 one p_sample with noise normal(fold_in(key, i))."""
  gen = GaussianDiffusion.create("10")
  z = _z(fx, "r050")[:6]
  net_fn = lambda x, t: head.apply(head_params, x, t, z)
  x_T = jax.random.normal(jax.random.key(4), (6, C))
  rng = jax.random.key(9)
  got = jax.jit(gen.p_sample_loop, static_argnums=(0, 1))(net_fn, (6, C), rng, 0.7, x_T)
  _, step_key = jax.random.split(rng)
  x = x_T
  for i in reversed(range(gen.num_timesteps)):
    t = jnp.full((6,), i, jnp.int32)
    out = net_fn(x, gen.model_timesteps(t))
    noise = jax.random.normal(jax.random.fold_in(step_key, i), x.shape, x.dtype)
    x = gen.p_sample(out, x, t, noise, 0.7)["sample"]
  # (jit vs eager rounding only; the untrained head drives x to large values)
  np.testing.assert_allclose(np.asarray(got), np.asarray(x), rtol=5e-5, atol=1e-5)


def test_sampling_loop(fx, head, head_params):
  gen100 = GaussianDiffusion.create("100")
  head_apply = functools.partial(head.apply, head_params)
  z, zu = _z(fx, "r050")[:8], _z(fx, "r050", uncond=True)[:8]
  sample = jax.jit(sample_tokens, static_argnums=(0, 5, 6))

  cond = sample(head_apply, z, jax.random.key(0), 1.0, None, gen100, C)
  assert cond.shape == (8, C) and bool(jnp.all(jnp.isfinite(cond)))
  guided = sample(head_apply, np.concatenate([z, zu]), jax.random.key(0), 1.0, 3.0, gen100, C)
  assert guided.shape == (16, C) and bool(jnp.all(jnp.isfinite(guided)))

  # Temperature 0: the chain is deterministic given the initial noise.
  noise = jax.random.normal(jax.random.key(5), (8, C))
  net_fn = lambda x, t: head_apply(x, t, z)
  loop = jax.jit(gen100.p_sample_loop, static_argnums=(0, 1))
  a = loop(net_fn, (8, C), jax.random.key(1), 0.0, noise)
  b = loop(net_fn, (8, C), jax.random.key(2), 0.0, noise)
  c = loop(net_fn, (8, C), jax.random.key(1), 1.0, noise)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_sampling_forms_equal_the_per_row_head(fx, head, head_params):
  """The chain's shortcuts (cond_embed(z) once, one time embedding per step) change no value:
  the head itself, and the whole guided and unguided chain against one that runs the plain
  per-row head at every step."""
  head_apply = functools.partial(head.apply, head_params)
  x, z = fx["inputs"]["pmv_x"], _z(fx, "r050")
  t = jnp.full((N,), 417, jnp.int32)
  c = head_apply(None, None, z)
  assert c.shape == (N, W)
  np.testing.assert_allclose(head_apply(x, jnp.int32(417), c, z_embedded=True),
                             head_apply(x, t, z), rtol=0, atol=1e-6)

  gen = GaussianDiffusion.create("25")
  zu = _z(fx, "r050", uncond=True)
  for cfg, zz in ((None, z[:8]), (3.0, np.concatenate([z[:8], zu[:8]]))):
    m = zz.shape[0]
    init_key, loop_key = jax.random.split(jax.random.key(3))
    if cfg is None:
      noise = jax.random.normal(init_key, (m, C))
      net_fn = lambda x, t, zz=zz: head_apply(x, t, zz)
    else:
      half = jax.random.normal(init_key, (m // 2, C))
      noise = jnp.concatenate([half, half])
      net_fn = lambda x, t, zz=zz: apply_with_cfg(head_apply, x, t, zz, 3.0, C)
    ref = gen.p_sample_loop(net_fn, (m, C), loop_key, 1.0, noise=noise)
    got = sample_tokens(head_apply, zz, jax.random.key(3), 1.0, cfg, gen, C)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_training_gradients(fx, train_diffusion, head, head_params):
  x0, z = _x0(fx), _z(fx, "r050")
  t = jnp.asarray(fx["inputs"]["diff_t_edge"], jnp.int32)  # includes t = 0 and t = 999
  noise = fx["inputs"]["diff_noise"]
  x_t = train_diffusion.q_sample(x0, t, noise)
  model_out = head.apply(head_params, x_t, t, z)

  # The vb term passes no gradient into the eps half of the output (frozen_out).
  g = jax.grad(lambda o: train_diffusion.training_losses(o, x0, x_t, t, noise)["vb"].sum())(
      model_out)
  assert bool(jnp.all(g[:, :C] == 0)) and float(jnp.abs(g[:, C:]).max()) > 0
  # ... and the mse term none into the variance half.
  g = jax.grad(lambda o: train_diffusion.training_losses(o, x0, x_t, t, noise)["mse"].sum())(
      model_out)
  assert bool(jnp.all(g[:, C:] == 0)) and float(jnp.abs(g[:, :C]).max()) > 0

  dl = _diffloss(mul=2, buckets=2)
  w = jnp.full((1, N), 1.0 / N)

  def loss_fn(params):
    apply = functools.partial(head.apply, params)
    return dl.loss(apply, z[None], x0[None], w, jax.random.key(3))[0]

  grads = jax.jit(jax.grad(loss_fn))(head_params)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in leaves)
  assert sum(float(jnp.abs(v).sum()) for v in leaves) > 0


def _diffloss(mul: int, buckets: int) -> DiffLoss:
  return DiffLoss(token_dim=C, num_train_timesteps=1000, noise_schedule="cosine",
                  prediction="eps", loss_space="eps", num_sampling_steps="50", batch_mul=mul,
                  buckets=buckets, clip_denoised=None)


def test_production_loss_equals_the_draws_recomputed_by_hand(fx, train_diffusion, head,
                                                              head_params):
  """`DiffLoss.loss` (the training loss, bucketed over counting rows) against the reference
  formulas applied to every token at full shape: the same (t, noise) draws from the key,
  x_t, head output, MSE + vb per draw, mean over draws, weighted sum; rows of weight 0
  contribute nothing and report 0."""
  x0, z = _x0(fx), _z(fx, "r050")
  apply = functools.partial(head.apply, head_params)
  mul, rng = 4, jax.random.key(4)
  w = np.zeros((N,), np.float32)
  w[::3] = np.linspace(0.5, 2.0, len(w[::3]))           # a third of the rows count
  loss, per_tok = _diffloss(mul, buckets=4).loss(apply, z[None], x0[None], w[None], rng)
  # By hand, compute-everything-then-mask (the reference's way).
  k_t, k_n = jax.random.split(rng)
  t = jax.random.randint(k_t, (mul, N), 0, 1000)
  noise = jax.random.normal(k_n, (mul, N, C), jnp.float32)
  want = np.zeros((N,))
  for d in range(mul):
    x_t = train_diffusion.q_sample(x0, t[d], noise[d])
    out = head.apply(head_params, x_t, train_diffusion.model_timesteps(t[d]), z)
    terms = train_diffusion.training_losses(out, x0, x_t, t[d], noise[d])
    np.testing.assert_allclose(terms["mse"] + terms["vb"], terms["loss"], rtol=1e-6)
    want += np.asarray(terms["loss"], np.float64) / mul
  want = np.where(w > 0, want, 0.0)
  assert len(np.unique(np.asarray(t))) > N
  np.testing.assert_allclose(np.asarray(per_tok)[0], want, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(float(loss), float((w * want).sum()), rtol=2e-5)


def test_fresh_head_init(head):
  x = jax.random.normal(jax.random.key(0), (4, C))
  t = jnp.array([0, 1, 500, 999], jnp.int32)
  z = jax.random.normal(jax.random.key(1), (4, W))
  params = head.init(jax.random.key(2), x, t, z)
  # MAR zero-inits the adaLN modulations and the output layer: a fresh head outputs 0.
  np.testing.assert_array_equal(head.apply(params, x, t, z), np.zeros((4, 2 * C)))
  p = params["params"]
  assert float(jnp.abs(p["res_blocks_0"]["adaLN_modulation_1"]["kernel"]).max()) == 0
  assert float(jnp.abs(p["cond_embed"]["bias"]).max()) == 0
  std = float(jnp.std(p["time_embed_0"]["kernel"]))
  assert 0.015 < std < 0.025
  bound = np.sqrt(6.0 / (C + W))  # xavier-uniform
  k = p["input_proj"]["kernel"]
  assert float(jnp.abs(k).max()) <= bound and float(jnp.abs(k).max()) > 0.8 * bound


def test_bf16_compute_is_close(fx, head_params):
  d = fx["diffusion"]
  t = jnp.asarray(fx["inputs"]["diff_t"], jnp.int32)
  bf16 = SimpleMLPAdaLN(in_channels=C, width=W, depth=DEPTH, dtype=jnp.bfloat16)
  out = bf16.apply(head_params, d["r050/x_t"], t, _z(fx, "r050"))
  assert out.dtype == jnp.float32
  assert_close(out, d["r050/mlp_out"], rel=5e-2, what="bf16 mlp_out")


def test_clip_denoised_option():
  """Off by default (reference); when set, pred_xstart is clipped and the mean follows it."""
  from dream_jax.diffusion.gaussian import GaussianDiffusion
  d = GaussianDiffusion.create("50")
  x = jax.random.normal(jax.random.key(0), (32, 4)) * 3
  out = jax.random.normal(jax.random.key(1), (32, 8))
  t = jnp.full((32,), 49, jnp.int32)
  free = d.p_mean_variance(out, x, t)
  clip = d.p_mean_variance(out, x, t, clip_denoised=1.0)
  assert float(jnp.abs(free["pred_xstart"]).max()) > 1.0
  assert float(jnp.abs(clip["pred_xstart"]).max()) <= 1.0
  np.testing.assert_array_equal(clip["log_variance"], free["log_variance"])
  t0 = jnp.full((32,), 0, jnp.int32)
  small = jnp.concatenate([jnp.zeros((32, 4)), out[:, 4:]], 1)
  np.testing.assert_allclose(d.p_mean_variance(small, x * 0.1, t0, clip_denoised=1.0)["mean"],
                             d.p_mean_variance(small, x * 0.1, t0)["mean"], atol=1e-6)


def test_single_step_chain_is_a_clear_error():
  from dream_jax.diffusion.gaussian import GaussianDiffusion
  with pytest.raises(ValueError, match="at least 2 steps"):
    GaussianDiffusion.create("1")
