"""Config options for small pixel-token runs (all off in paper configs): the diffusion head's
prediction target and loss space, a learning-rate multiplier for the head, and the identity
tokenizer's pixel shift / scale."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from dream_jax.diffusion.gaussian import GaussianDiffusion
from dream_jax.train import optim


def _draw(n=64, c=12, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  x0 = jax.random.uniform(k[0], (n, c), minval=-1.0, maxval=1.0)
  noise = jax.random.normal(k[1], (n, c))
  t = jax.random.randint(k[2], (n,), 0, 1000)
  out = jax.random.normal(k[3], (n, 2 * c))
  return x0, noise, t, out


def _snr(d, t):
  ac = jnp.asarray(d.alphas_cumprod, jnp.float32)[t]
  return ac / (1.0 - ac)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_loss_spaces_are_the_snr_weightings_of_one_x0_error(schedule):
  x0, noise, t, out = _draw()
  ref = GaussianDiffusion.create("", schedule)
  x_t = ref.q_sample(x0, t, noise)
  # The reference eps MSE, and the same quantity written as SNR * x0 error through the
  # general path: d_eps = -sqrt(SNR) d_x0 for the same x_t.
  eps_ref = ref.training_losses(out, x0, x_t, t, noise)
  x0_hat = ref.predict_xstart(out[:, :12], x_t, t)
  sq = jnp.mean(jnp.square(x0_hat - x0), axis=-1)
  np.testing.assert_allclose(eps_ref["mse"], _snr(ref, t) * sq, rtol=2e-3, atol=1e-5)
  np.testing.assert_array_equal(eps_ref["mse"],
                                jnp.mean(jnp.square(noise - out[:, :12]), axis=-1))
  v = GaussianDiffusion.create("", schedule, loss_space="v")
  xl = GaussianDiffusion.create("", schedule, loss_space="x0")
  lv = v.training_losses(out, x0, x_t, t, noise)
  lx = xl.training_losses(out, x0, x_t, t, noise)
  np.testing.assert_allclose(lx["mse"], sq, rtol=1e-6)
  # |d_v|^2 = |d_eps|^2 + |d_x0|^2.
  np.testing.assert_allclose(lv["mse"], eps_ref["mse"] + sq, rtol=2e-3, atol=1e-5)
  # The variance term does not depend on where the MSE is taken.
  np.testing.assert_array_equal(lv["vb"], eps_ref["vb"])


def test_x0_prediction_reads_the_head_output_as_the_clean_token():
  x0, noise, t, out = _draw(c=6)
  d = GaussianDiffusion.create("50", "linear", prediction="x0", loss_space="v")
  t = t % d.num_timesteps
  x_t = d.q_sample(x0, t, noise)
  np.testing.assert_array_equal(d.predict_xstart(out[:, :6], x_t, t), out[:, :6])
  pmv = d.p_mean_variance(out, x_t, t, clip_denoised=0.5)
  np.testing.assert_array_equal(pmv["pred_xstart"], jnp.clip(out[:, :6], -0.5, 0.5))
  mean, _, _ = d.q_posterior_mean_variance(pmv["pred_xstart"], x_t, t)
  np.testing.assert_allclose(pmv["mean"], mean, rtol=1e-6)
  # A perfect x0 output has zero MSE in every loss space.
  perfect = jnp.concatenate([x0, out[:, 6:]], axis=-1)
  assert float(jnp.max(d.training_losses(perfect, x0, x_t, t, noise)["mse"])) == 0.0
  # The eps chain reads the same output differently.
  e = GaussianDiffusion.create("50", "linear")
  assert not np.allclose(e.predict_xstart(out[:, :6], x_t, t), out[:, :6])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_v_prediction_reads_the_head_output_as_velocity(schedule):
  x0, noise, t, out = _draw(c=6)
  d = GaussianDiffusion.create("", schedule, prediction="v", loss_space="v")
  x_t = d.q_sample(x0, t, noise)
  # Independently: x_t = a x0 + s eps with a^2 + s^2 = 1, v = a eps - s x0, so x0 = a x_t - s v.
  a = jnp.sqrt(jnp.asarray(d.alphas_cumprod, jnp.float32)[t])[:, None]
  s = jnp.sqrt(1.0 - jnp.asarray(d.alphas_cumprod, jnp.float32)[t])[:, None]
  v_true = a * noise - s * x0
  np.testing.assert_allclose(d.predict_xstart(v_true, x_t, t), x0, atol=2e-5)
  # The v-space loss of any output is its squared velocity error.
  got = d.training_losses(out, x0, x_t, t, noise)["mse"]
  want = jnp.mean(jnp.square(out[:, :6] - v_true), axis=-1)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)
  perfect = jnp.concatenate([v_true, out[:, 6:]], axis=-1)
  assert float(jnp.max(d.training_losses(perfect, x0, x_t, t, noise)["mse"])) < 1e-8


def test_diffusion_option_names_are_checked():
  with pytest.raises(ValueError, match="prediction"):
    GaussianDiffusion.create("", prediction="velocity")
  with pytest.raises(ValueError, match="loss space"):
    GaussianDiffusion.create("", loss_space="l1")
  c = common.base_config()
  c.model.diffusion_prediction = "velocity"
  with pytest.raises(ValueError, match="model.diffusion_prediction"):
    common.validate(c)
  c = common.base_config()
  c.model.diffusion_loss_space = "l1"
  with pytest.raises(ValueError, match="model.diffusion_loss_space"):
    common.validate(c)


def test_model_builds_its_chains_from_the_config():
  from configs import demo
  from dream_jax.train.components import build_model
  c = demo.get_config()
  c.model.diffusion_prediction, c.model.diffusion_loss_space = "x0", "v"
  m = build_model(c)
  for chain in (m.train_diffusion, m.sample_diffusion("10")):
    assert (chain.prediction, chain.loss_space) == ("x0", "v")
  assert m.sample_diffusion("10").num_timesteps == 10


def test_logit_normal_timesteps_follow_their_distribution_and_uniform_is_the_reference():
  from configs import demo
  from dream_jax.train.components import build_model
  c = demo.get_config()
  key = jax.random.key(3)
  # Default: MAR's uniform integer draw, bit for bit (the parity tests depend on it).
  t = build_model(c).diffloss.draw_timesteps(key, (4, 1000))
  np.testing.assert_array_equal(t, jax.random.randint(key, (4, 1000), 0, 1000))
  mean, std = 1.0, 0.7
  c.model.update(diffusion_t_sampling="logit_normal", diffusion_t_logit_mean=mean,
                 diffusion_t_logit_std=std)
  common.validate(c)
  t = np.asarray(build_model(c).diffloss.draw_timesteps(key, (200_000,)))
  assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= 999
  # P(t >= T/2) = P(mean + std n >= 0) = Phi(mean / std), by the error function.
  from math import erf, sqrt
  np.testing.assert_allclose(np.mean(t >= 500), 0.5 * (1 + erf(mean / std / sqrt(2))),
                             atol=0.005)
  # E[t / T] = E[sigmoid(mean + std n)] by Gauss-Hermite quadrature, less the floor's 1/2T.
  x, w = np.polynomial.hermite_e.hermegauss(64)
  expect = np.sum(w / (1 + np.exp(-(mean + std * x)))) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(np.mean(t) / 1000, expect - 0.0005, atol=0.002)
  for bad, key_name in (({"diffusion_t_sampling": "beta"}, "model.diffusion_t_sampling"),
                        ({"diffusion_t_logit_std": 0.0}, "model.diffusion_t_logit_std")):
    c2 = demo.get_config()
    c2.model.update(**bad)
    with pytest.raises(ValueError, match=key_name):
      common.validate(c2)


def test_sincos2d_position_init_is_the_2d_table_with_zero_buffer_slots():
  from configs import demo
  from dream_jax.models import layers
  from dream_jax.train.components import build_model
  table = np.asarray(layers.sincos_2d_position_init(2)(None, (1, 2 + 9, 8)))[0]
  np.testing.assert_array_equal(table[:2], 0.0)
  for p in range(9):          # row-major 3 x 3 grid; D/4 = 2 frequencies 1, 1/100
    r, col = divmod(p, 3)
    want = [np.sin(r), np.sin(r / 100), np.cos(r), np.cos(r / 100),
            np.sin(col), np.sin(col / 100), np.cos(col), np.cos(col / 100)]
    np.testing.assert_allclose(table[2 + p], want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="square grid"):
    layers.sincos_2d_position_init(2)(None, (1, 2 + 8, 8))
  # The run's tables start from it: the demo's 4 x 4 grid of tokens, widths 128.
  c = demo.get_config()
  c.model.pos_embed_init = "sincos2d"
  common.validate(c)
  variables = build_model(c).init(jax.random.key(0))
  b = c.model.buffer_size
  for name in ("encoder_pos_embed", "decoder_pos_embed"):
    t = np.asarray(variables["params"][name])[0]
    np.testing.assert_array_equal(t[:b], 0.0)
    # Position (2, 3) of the 4 x 4 grid, channel 0 = sin(row), channel 64 = sin(col).
    np.testing.assert_allclose(t[b + 2 * 4 + 3, [0, 64]], [np.sin(2.0), np.sin(3.0)],
                               rtol=1e-6)
  c.model.pos_embed_init = "fourier"
  with pytest.raises(ValueError, match="model.pos_embed_init"):
    common.validate(c)


def test_head_lr_mult_scales_only_the_diffusion_head():
  updates = {"params": {"diffloss": {"a": jnp.ones((2,))},
                        "decoder": {"diffloss_like": jnp.ones((3,)), "w": jnp.ones((2, 2))}}}
  plain = optim.apply_lr(updates, 0.1)
  same = optim.apply_lr(updates, 0.1, 1.0)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(same)):
    np.testing.assert_array_equal(a, b)
  out = optim.apply_lr(updates, 0.1, 4.0)
  np.testing.assert_allclose(out["params"]["diffloss"]["a"], -0.4)
  np.testing.assert_allclose(out["params"]["decoder"]["diffloss_like"], -0.1)
  np.testing.assert_allclose(out["params"]["decoder"]["w"], -0.1)
  c = common.base_config()
  c.optim.head_lr_mult = 0.0
  with pytest.raises(ValueError, match="optim.head_lr_mult"):
    common.validate(c)


def test_pixel_shift_and_scale_round_trip():
  from configs import demo
  from dream_jax.image_tokens import ImageTokens
  c = demo.get_config()
  c.tokenizer.update(kind="identity", patch_size=4)   # pixel tokens (the demo's are fitted)
  img = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
  c.tokenizer.pixel_shift, c.tokenizer.pixel_scale = 0.0, 1.0   # raw patches
  base = ImageTokens(c).to_tokens({}, {"image": img}, jax.random.key(0))
  c.tokenizer.pixel_shift, c.tokenizer.pixel_scale = -0.9, 2.5
  tok = ImageTokens(c)
  tokens = tok.to_tokens({}, {"image": img}, jax.random.key(0))
  np.testing.assert_allclose(tokens, (base + 0.9) * 2.5, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(tok.from_tokens({}, tokens), img, atol=1e-6)
  c.tokenizer.pixel_scale = 0.0
  with pytest.raises(ValueError, match="tokenizer.pixel_scale"):
    common.validate(c)


def test_workdir_config_from_before_an_option_existed_loads_with_its_default(tmp_path):
  import json
  from configs import demo
  from dream_jax.train.inference import load_config
  c = demo.get_config()
  raw = json.loads(c.to_json())
  del raw["optim"]["head_lr_mult"]
  del raw["tokenizer"]["pixel_shift"]
  del raw["loss"]["w_token_regression"]
  raw["model"]["width"] = 96               # a value the run chose stays
  (tmp_path / "config.json").write_text(json.dumps(raw))
  loaded = load_config(str(tmp_path))
  assert loaded.optim.head_lr_mult == 1.0 and loaded.tokenizer.pixel_shift == 0.0
  assert loaded.loss.w_token_regression == 0.0
  assert loaded.model.width == 96
  with pytest.raises(AttributeError):
    loaded.optim.no_such_key = 1             # still locked


def test_workdir_config_from_before_the_shapes_rename_loads(tmp_path):
  import json
  from configs import demo
  from dream_jax.train.inference import load_config
  raw = json.loads(demo.get_config().to_json())
  raw["data"]["name"] = "embedded"          # what configs wrote before the rename
  raw["data"]["embedded_size"] = raw["data"].pop("shapes_size") + 1
  # Keys removed since: a duplicate of data.image_size, one of sampling.num_diffusion_steps,
  # and the never-read shuffle buffer.
  raw["tokenizer"]["image_size"] = raw["data"]["image_size"]
  raw["model"]["num_sampling_steps"] = "50"
  raw["data"]["shuffle_buffer"] = 1024
  (tmp_path / "config.json").write_text(json.dumps(raw))
  loaded = load_config(str(tmp_path))
  assert loaded.data.name == "shapes"
  assert loaded.data.shapes_size == demo.get_config().data.shapes_size + 1
  assert "embedded_size" not in loaded.data and "shuffle_buffer" not in loaded.data
  assert "image_size" not in loaded.tokenizer and "num_sampling_steps" not in loaded.model
  assert loaded.to_dict() == dict(demo.get_config().to_dict(),
                                  data=dict(demo.get_config().data.to_dict(),
                                            shapes_size=demo.get_config().data.shapes_size + 1))


@pytest.mark.slow
def test_token_regression_is_off_by_default_and_adds_a_zero_init_readout_loss():
  """loss.w_token_regression: no parameters and no loss term when 0 (paper configs); when on,
  a zero-initialised linear readout of z whose weighted MSE on the diffusion loss's tokens is
  added to the total, and whose gradient reaches the decoder once the readout is non-zero."""
  from dream_jax.data import make_dataset
  from dream_jax.train.components import Components
  from tests.helpers import train_config as tiny_config
  off = Components(tiny_config())
  assert "token_readout" not in jax.eval_shape(off.model.init, jax.random.key(0))["params"]
  assert common.base_config().loss.w_token_regression == 0.0

  w = 2.0
  comp = Components(tiny_config(**{"loss.w_token_regression": w}))
  v = comp.model.init(jax.random.key(0))
  np.testing.assert_array_equal(v["params"]["token_readout"]["kernel"], 0.0)
  batch = {k: jnp.asarray(x) for k, x in next(make_dataset(comp.config, "train").iterator())
           .items() if hasattr(x, "dtype") and x.dtype != object}
  # A non-zero readout, so that the by-hand value and the decoder gradient are not trivial.
  rk = jax.random.split(jax.random.key(1))
  ro = v["params"]["token_readout"]
  ro = dict(kernel=0.1 * jax.random.normal(rk[0], ro["kernel"].shape),
            bias=0.1 * jax.random.normal(rk[1], ro["bias"].shape))
  params = dict(v["params"], token_readout=ro)
  rng = jax.random.key(3)

  def total(p, w_reg):
    comp.config.loss.w_token_regression = w_reg
    out = comp.objective(p, v["batch_stats"], {}, batch, rng, 1.0)
    comp.config.loss.w_token_regression = w
    return out

  loss, (_, m) = total(params, w)
  base, (_, m0) = total(params, 0.0)
  assert "loss_token_regression" in m and "loss_token_regression" not in m0
  np.testing.assert_allclose(loss, base + w * m["loss_token_regression"], rtol=1e-5)
  assert float(m["loss_token_regression"]) > 0

  # By hand: the same tokens, masks, condition and z as the objective (same named streams).
  from dream_jax import losses, masking, objective
  obj, model, cfg = comp.objective, comp.model, comp.config
  k = objective.split_streams(rng)
  var = {"params": params, "batch_stats": v["batch_stats"]}
  tokens = obj.image_tokens.to_tokens({}, batch, k["vae"])
  mask = masking.sample_masks(k["mask"], *tokens.shape[:2], 1.0, cfg.masking)["mask"]
  enc = model.encode_image(var, tokens, ~mask, train=True, rng=k["dropout_enc"])
  drop = jax.random.bernoulli(k["caption_drop"], cfg.loss.caption_drop, (tokens.shape[0],))
  ctx, cm = obj.conditioning.condition(var, {}, batch, drop=drop, train=True,
                                       rng=k["dropout_cond"])
  z = model.decode(var, enc.hidden, enc.valid, ctx, cm, train=True, rng=k["dropout_dec"])
  wts, _ = losses.diffusion_token_weights(mask, cfg.masking.group_size,
                                          cfg.loss.diff_min_mask_ratio)
  pred = z @ ro["kernel"] + ro["bias"]
  want = (wts * jnp.mean(jnp.square(pred - tokens), -1)).sum()
  np.testing.assert_allclose(m["loss_token_regression"], want, rtol=1e-5)

  # The term's gradient reaches the decoder (the point of the option) once the readout is
  # non-zero; at the zero initialisation it sends none (the readout learns first).
  def dec_grad(p):
    g = jax.grad(lambda q: total(q, w)[1][1]["loss_token_regression"])(p)
    return float(optax.tree.norm(g["decoder_blocks_0"]))
  assert dec_grad(params) > 0 and dec_grad(v["params"]) == 0
