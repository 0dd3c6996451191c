"""Parity with the official PyTorch DREAM on the recorded tiny model (shared fixtures).

Every recorded output is reproduced from the official weights (converted with
`dream_jax.models.convert_official`) in fp32, within the README's suggested tolerance:
max|ours - ref| <= 1e-5 * max|ref| per array (1e-6 absolute for exact zeros), scalars 1e-5
relative. Diffusion schedule / head / p_mean_variance parity lives in test_diffusion.py.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from dream_jax.tokenizers import first_eot_position
from tests.helpers import FIXTURES

pytestmark = pytest.mark.skipif(
    not os.path.isdir(FIXTURES) and os.environ.get("CI") != "true",
    reason="official fixtures not present")


def close(ours, ref, rtol=1e-5, what=""):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  scale = np.abs(ref).max()
  err = np.abs(ours - ref).max() if ref.size else 0.0
  tol = rtol * scale if scale > 0 else 1e-6
  assert err <= tol, f"{what}: max err {err:.3g} > {tol:.3g} (max|ref| {scale:.3g})"
  return err / max(scale, 1e-30)


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scan"])
def fx(request):
  """Every parity check runs twice: blocks unrolled, and in nn.scan (model.scan_layers) with
  the converted weights stacked by `dream.convert_layout`."""
  from configs import official_tiny
  from dream_jax.train.components import build_model
  from dream_jax.models.convert_official import check_against, variables_from_official
  from dream_jax.models.dream import convert_layout
  load = lambda n: load_file(os.path.join(FIXTURES, n))
  cfg = official_tiny.get_config()
  variables = jax.tree.map(jnp.asarray, variables_from_official(load("weights.safetensors")))
  if request.param:
    cfg = cfg.copy_and_resolve_references()
    cfg.model.scan_layers = True
  model = build_model(cfg)
  if request.param:
    variables = dict(variables, params=convert_layout(variables["params"], model.spec,
                                                      scanned=True))
  check_against(variables, jax.eval_shape(model.init, jax.random.key(0)))
  return dict(cfg=cfg, model=model, v=variables, inp=load("inputs.safetensors"),
              ev=load("eval_outputs.safetensors"), tr=load("train_outputs.safetensors"),
              dbg=load("debug_intermediates.safetensors"), diff=load("diffusion.safetensors"))


def tokens_of(fx):
  from dream_jax.models.patchify import patchify
  lat = jnp.asarray(fx["inp"]["latents"]).transpose(0, 2, 3, 1)   # NCHW -> NHWC
  return patchify(lat, 2)


def gather_visible(hidden, valid):
  """Position-indexed encoder output -> reference layout (buffer, visible in order)."""
  rows = [np.asarray(h)[np.asarray(v)] for h, v in zip(hidden, valid)]
  return np.stack(rows)


def test_patchify(fx):
  close(tokens_of(fx), fx["ev"]["patchified_tokens"], what="patchify")


@pytest.mark.parametrize("case", ["r050", "r0875"])
@pytest.mark.parametrize("path", ["masked", "drop"])
def test_encoder_projection_decoder(fx, case, path):
  model, v, ev = fx["model"], fx["v"], fx["ev"]
  visible = jnp.asarray(fx["inp"][f"mask_{case}"] == 0)
  keep = int(visible.sum(1).max()) if path == "drop" else None
  if path == "masked":
    hidden, valid = model._apply(v, tokens_of(fx), visible, None, True,
                                 method=type(model.module).encode)
  else:
    hidden, valid = model.encode_tokens(v, tokens_of(fx), visible, num_keep=keep)
  close(gather_visible(hidden, valid), ev[f"{case}/encoder_out"], what=f"{case} encoder")
  emb, _ = model.project(v, hidden, valid, train=False)
  close(emb, ev[f"{case}/image_embed"] / np.linalg.norm(ev[f"{case}/image_embed"], axis=1,
                                                        keepdims=True), what="image_embed")
  ctx = model.condition(v, dict(features=jnp.asarray(fx["inp"]["t5_embeddings"])))
  z = model.decode(v, hidden, valid, ctx)
  close(z, ev[f"{case}/decoder_z"], what=f"{case} decoder_z")


def test_unnormalised_projection_and_debug(fx):
  """The projection before L2 norm equals the official image_embed (not normalised)."""
  model, v, ev, dbg = fx["model"], fx["v"], fx["ev"], fx["dbg"]
  visible = jnp.asarray(fx["inp"]["mask_r050"] == 0)
  hidden, valid = model.encode_tokens(v, tokens_of(fx), visible, num_keep=8)
  w = valid[..., None].astype(jnp.float32)
  pooled = (hidden * w).sum(1) / w.sum(1)
  out = model.module.apply(v, pooled, use_running_average=True,
                           method=lambda m, x, **k: m.image_projection(x, **k))
  close(out, ev["r050/image_embed"], what="image_embed (unnormalised)")
  close(out, dbg["r050/image_projection/layer3_out"], what="layer3_out")


def test_text_tower(fx):
  model, v, ev, dbg = fx["model"], fx["v"], fx["ev"], fx["dbg"]
  ids = jnp.asarray(fx["inp"]["clip_tokens"], jnp.int32)
  eot = first_eot_position(ids, eot_id=999)
  np.testing.assert_array_equal(eot, fx["inp"]["clip_eot_positions"])
  emb, feats = model.embed_text(v, ids, eot)
  close(emb, ev["text_features_normalized"], what="text embedding")
  close(feats, dbg["r050/text_tower/ln_final_out"], what="ln_final_out")
  close(np.exp(np.asarray(v["params"]["logit_scale"])), ev["logit_scale_exp"], what="scale")


def test_aligner(fx):
  model, v, ev = fx["model"], fx["v"], fx["ev"]
  ctx = model.condition(v, dict(features=jnp.asarray(fx["inp"]["t5_embeddings"])))
  close(ctx, ev["text_aligner_out"], what="aligner")
  u = jnp.broadcast_to(jnp.asarray(fx["inp"]["t5_embeddings_uncond"]), (4, 8, 32))
  close(model.condition(v, dict(features=u)), ev["text_aligner_out_uncond"], what="uncond")


def test_decoder_uncond(fx):
  model, v, ev = fx["model"], fx["v"], fx["ev"]
  visible = jnp.asarray(fx["inp"]["mask_r050"] == 0)
  hidden, valid = model.encode_tokens(v, tokens_of(fx), visible, num_keep=8)
  u = jnp.broadcast_to(jnp.asarray(fx["inp"]["t5_embeddings_uncond"]), (4, 8, 32))
  z = model.decode(v, hidden, valid, model.condition(v, dict(features=u)))
  close(z, ev["r050/decoder_z_uncond"], what="decoder_z_uncond")


def _clip(fx, case, train):
  from dream_jax import losses
  model, v = fx["model"], fx["v"]
  mask = jnp.asarray(fx["inp"][f"mask_{case}"] == 1)
  hidden, valid = model.encode_tokens(v, tokens_of(fx), ~mask, num_keep=16)
  emb, stats = model.project(v, hidden, valid, train=train)
  ids = jnp.asarray(fx["inp"]["clip_tokens"], jnp.int32)
  txt, _ = model.embed_text(v, ids, jnp.asarray(first_eot_position(ids, 999), jnp.int32))
  contributes = losses.clip_contributes(mask, 0.75)
  return emb, stats, txt, contributes, model.logit_scale(v)


@pytest.mark.parametrize("case", ["r050", "r0875"])
def test_clip_loss_eval_and_train(fx, case):
  from dream_jax import losses
  ev, tr = fx["ev"], fx["tr"]
  emb, _, txt, contributes, scale = _clip(fx, case, train=False)
  np.testing.assert_array_equal(contributes, ev[f"{case}/clip_loss_mask"])
  loss, frac = losses.clip_loss(emb, txt, scale, contributes)
  close(loss, ev[f"{case}/clip_loss"], what="eval clip loss")
  close(frac, ev[f"{case}/clip_contributing_fraction"], what="fraction")
  emb, stats, txt, contributes, scale = _clip(fx, case, train=True)
  t_emb = tr[f"{case}/image_embed"]
  close(emb, t_emb / np.linalg.norm(t_emb, axis=1, keepdims=True), what="train image_embed")
  loss, _ = losses.clip_loss(emb, txt, scale, contributes)
  close(loss, tr[f"{case}/clip_loss"], what="train clip loss")
  for bn in ("bn1", "bn2"):
    for ours, ref in (("mean", "running_mean"), ("var", "running_var")):
      close(stats["image_projection"][bn][ours],
            tr[f"{case}/bn_after_one_forward/image_projection.{bn}.{ref}"], what=f"{bn} {ref}")
  model, v = fx["model"], fx["v"]
  v2 = {"params": v["params"], "batch_stats": stats}
  visible = jnp.asarray(fx["inp"][f"mask_{case}"] == 0)
  e2 = model.encode_image(v2, tokens_of(fx), visible, train=False)
  ref = tr[f"{case}/image_embed_eval_after_bn_update"]
  close(e2.embedding, ref / np.linalg.norm(ref, axis=1, keepdims=True), what="eval after update")


def test_mixed_filter_clip_loss(fx):
  from dream_jax import losses
  emb, _, txt, _, scale = _clip(fx, "r050", train=False)
  mixed = jnp.asarray(fx["inp"]["clip_loss_mask_mixed"])
  loss, frac = losses.clip_loss(emb, txt, scale, mixed)
  close(loss, fx["ev"]["mixed_filter/clip_loss"], what="mixed clip loss")
  close(frac, fx["ev"]["mixed_filter/clip_contributing_fraction"], what="mixed fraction")


@pytest.mark.parametrize("case", ["r050", "r0875"])
def test_mar_loss_and_total(fx, case):
  """Diffusion loss through our grouped/gated reduction equals the official MAR loss."""
  from dream_jax import losses
  model, v, inp, d, tr = fx["model"], fx["v"], fx["inp"], fx["diff"], fx["tr"]
  mask = jnp.asarray(inp[f"mask_{case}"] == 1)
  tokens = tokens_of(fx)
  hidden, valid = model.encode_tokens(v, tokens, ~mask, num_keep=16)
  z = model.decode(v, hidden, valid, model.condition(
      v, dict(features=jnp.asarray(inp["t5_embeddings"]))))
  diff = model.train_diffusion
  t = jnp.asarray(inp["diff_t"], jnp.int32)
  noise = jnp.asarray(inp["diff_noise"])
  x0 = tokens.reshape(64, 16)
  x_t = diff.q_sample(x0, t, noise)
  close(x_t, d[f"{case}/x_t"], what="x_t")
  out = model.diffusion_net(v, x_t, t, z.reshape(64, 64))
  close(out, d[f"{case}/mlp_out"], what="mlp_out")
  terms = diff.training_losses(out, x0, x_t, t, noise)
  close(terms["loss"], d[f"{case}/terms_loss"], what="terms_loss")
  w, gate = losses.diffusion_token_weights(mask, group_size=4, min_ratio=0.5)
  mar = (w.reshape(64) * terms["loss"]).sum()
  close(mar, d[f"{case}/mar_loss"], what="mar_loss")
  close(mar, tr[f"{case}/forward_loss"], what="forward_loss")
  assert bool(gate.all()) == (tr[f"{case}/forward_mask_info_percentage_batch_with_mar"] == 1)
  emb, _, txt, contributes, scale = _clip(fx, case, train=True)
  clip, _ = losses.clip_loss(emb, txt, scale, contributes)
  close(1.0 * mar + 0.005 * clip, tr[f"{case}/forward_total_loss"], what="total loss")


def test_convert_weights_cli(fx, tmp_path):
  """`convert_weights --kind=dream_torch` writes what the test above loads, and refuses a
  config the weights do not fit, naming the mismatching entries."""
  from dream_jax.pretrained.loading import load_converted_params
  from dream_jax.tools.convert_weights import main
  src = os.path.join(FIXTURES, "weights.safetensors")
  assert main(["--kind=dream_torch", f"--src={src}", f"--dst={tmp_path}/ok",
               "--config=configs/official_tiny.py"]) == 0
  got = load_converted_params(str(tmp_path / "ok"))
  if fx["cfg"].model.scan_layers:   # the file holds the unrolled layout: stack it
    from dream_jax.models.dream import convert_layout
    got = dict(got, params=convert_layout(got["params"], fx["model"].spec, scanned=True))
  assert jax.tree.structure(got) == jax.tree.structure(fx["v"])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(fx["v"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert main(["--kind=dream_torch", f"--src={src}", f"--dst={tmp_path}/bad",
               "--config=configs/dream_b16.py:runlocal"]) == 1
