"""The fitted autoencoder tokenizer (tokenizer.kind='autoencoder'): round trip, reconstruction
against baselines computed here, measured normalisation, cache reuse and path errors."""
import json
import os

import jax
import numpy as np
import pytest

from dream_jax.image_tokens import ImageTokens
from dream_jax.pretrained import autoencoder
from dream_jax.train import tokenizer
from tests.helpers import train_config


def _config(tmp_path, **tok):
  """32 px shapes, 4x4-patch PCA to 8 channels: 64 tokens of dim 8, fitted on 256 images."""
  base = {"data.image_size": 32, "tokenizer.kind": "autoencoder", "tokenizer.ae_model": "pca",
          "tokenizer.ae_patch": 4, "tokenizer.vae_stride": 4, "tokenizer.latent_channels": 8,
          "tokenizer.patch_size": 1, "tokenizer.ae_train_size": 256,
          "tokenizer.cache_dir": str(tmp_path / "cache")}
  base.update({f"tokenizer.{k}": v for k, v in tok.items()})
  return train_config(**base)


def test_pca_round_trip_and_reconstruction_beats_baselines(tmp_path):
  c = _config(tmp_path)
  path = tokenizer.ensure(c, log=lambda *_: None)
  it = ImageTokens(c)
  frozen = it.init_frozen()
  images, _ = tokenizer.render_images(c, 64, heldout=True)
  tokens = it.to_tokens(frozen, {"image": images}, jax.random.key(0), sample=False)
  assert tokens.shape == (64, 64, 8) and tokens.dtype == np.float32
  recon = np.asarray(it.from_tokens(frozen, tokens))
  assert recon.shape == images.shape
  mse = float(np.mean((recon - images) ** 2))
  # Baselines computed here: the mean image, and a random orthonormal projection of the
  # same 48-d patches to the same 8 dims (what "low-dimensional" costs without fitting).
  mean_mse = float(np.mean((images - images.mean(axis=0)) ** 2))
  x = np.asarray(autoencoder.space_to_depth(images, 4)).reshape(-1, 48)
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(48, 8)))
  mu = x.mean(axis=0)
  rand_mse = float(np.mean((((x - mu) @ q) @ q.T + mu - x) ** 2))
  assert mse < 0.25 * mean_mse and mse < 0.5 * rand_mse, (mse, mean_mse, rand_mse)
  manifest = json.load(open(os.path.join(path, "manifest.json")))
  assert manifest["metrics"]["heldout_mse"] < 0.25 * manifest["metrics"]["mean_image_mse"]


def test_normalisation_is_measured_on_training_images(tmp_path):
  c = _config(tmp_path)
  tokenizer.ensure(c, log=lambda *_: None)
  it = ImageTokens(c)
  images, _ = tokenizer.render_images(c, 256, heldout=False)
  tokens = np.asarray(it.to_tokens(it.init_frozen(), {"image": images}, jax.random.key(0)))
  assert abs(tokens.mean(axis=(0, 1))).max() < 1e-3   # per channel: the measured shift
  assert abs(tokens.std() - 1.0) < 1e-3                # one scale for all channels


def test_token_scale_multiplies_the_measured_scale_and_keeps_the_round_trip(tmp_path):
  c = _config(tmp_path)
  tokenizer.ensure(c, log=lambda *_: None)
  small = _config(tmp_path, ae_token_scale=0.25)
  # A use-time factor: the same fitted directory serves both (not part of the cache key).
  assert autoencoder.resolve_path(small) == autoencoder.resolve_path(c)
  images, _ = tokenizer.render_images(c, 32, heldout=True)
  unit, quarter = ImageTokens(c), ImageTokens(small)
  frozen = unit.init_frozen()
  t1 = np.asarray(unit.to_tokens(frozen, {"image": images}, jax.random.key(0), sample=False))
  tq = np.asarray(quarter.to_tokens(frozen, {"image": images}, jax.random.key(0), sample=False))
  np.testing.assert_allclose(tq, 0.25 * t1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(quarter.from_tokens(frozen, tq)),
                             np.asarray(unit.from_tokens(frozen, t1)), atol=1e-5)


def test_cache_reuse_and_settings_key(tmp_path, monkeypatch):
  c = _config(tmp_path)
  first = tokenizer.ensure(c, log=lambda *_: None)
  before = open(os.path.join(first, "params.msgpack"), "rb").read()

  def no_fit(*a, **k):
    raise AssertionError("fitted again although the cache exists")
  monkeypatch.setattr(tokenizer, "fit", no_fit)
  assert tokenizer.ensure(c, log=lambda *_: None) == first
  assert open(os.path.join(first, "params.msgpack"), "rb").read() == before
  monkeypatch.undo()
  # A setting that changes the weights gets its own entry; the fit is deterministic.
  other = tokenizer.ensure(_config(tmp_path, latent_channels=4), log=lambda *_: None)
  assert other != first
  again = tokenizer.write(c, str(tmp_path / "again"), log=lambda *_: None)
  assert again["heldout_mse"] == json.load(open(os.path.join(first, "manifest.json")))[
      "metrics"]["heldout_mse"]
  assert open(os.path.join(tmp_path / "again", "params.msgpack"), "rb").read() == before


def test_explicit_path_missing_or_corrupt(tmp_path):
  missing = str(tmp_path / "nope")
  c = _config(tmp_path, path=missing)
  with pytest.raises(FileNotFoundError, match="nope.*train_tokenizer"):
    tokenizer.ensure(c, log=lambda *_: None)
  assert not os.path.exists(missing)      # an explicit path is never written implicitly
  good = tokenizer.ensure(_config(tmp_path), log=lambda *_: None)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "params.msgpack").write_bytes(b"not msgpack")
  (bad / "manifest.json").write_text(open(os.path.join(good, "manifest.json")).read())
  with pytest.raises(ValueError, match="bad.*unreadable"):
    ImageTokens(_config(tmp_path, path=str(bad))).init_frozen()
  # A stored tokenizer of another shape is refused, not silently used.
  with pytest.raises(ValueError, match="does not match"):
    ImageTokens(_config(tmp_path, path=good, latent_channels=4)).init_frozen()


@pytest.mark.slow
def test_kl_vae_fits_and_round_trips(tmp_path):
  """The KL-VAE option: a few Adam steps lower the loss; shapes of tokens and images."""
  c = _config(tmp_path, ae_model="kl_vae", ae_channels=(16,), ae_groups=4, ae_attention=False,
              latent_channels=4, ae_steps=6, ae_batch=8, ae_train_size=32)
  logs = []
  tokenizer.ensure(c, log=logs.append)
  it = ImageTokens(c)
  frozen = it.init_frozen()
  images, _ = tokenizer.render_images(c, 8, heldout=True)
  tokens = it.to_tokens(frozen, {"image": images}, jax.random.key(0))
  assert tokens.shape == (8, 64, 4)
  assert np.asarray(it.from_tokens(frozen, tokens)).shape == images.shape
  assert any("tokenizer step 6/6" in line for line in logs)
