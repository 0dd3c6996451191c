"""Fits the small frozen autoencoder tokenizer (`tokenizer.kind='autoencoder'`) to the run's
shapes data, measures its latent normalisation and writes it (pretrained/autoencoder.py).

`ensure(config)` is what the trainer and the inference loader call: it returns the tokenizer
directory, fitting it first only when the DEFAULT (hashed cache) directory is missing, so the
demo still runs offline from a fresh clone with one command and later runs reuse it. An
explicit `tokenizer.path` is never written here: a missing or corrupt one is an error.

Fitting (`fit(config)`), on the first `ae_train_size` train images; deterministic given
`config.seed`:
  'pca'     the top `latent_channels` right singular vectors of the centred q x q x 3
            patches (sign fixed so each vector's largest entry is positive);
  'kl_vae'  `ae_steps` Adam steps (cosine decay) on batches of `ae_batch`, loss = pixel MSE
            of the decoded posterior sample + `ae_kl_weight` * KL(q(z|x) || N(0, 1)) per
            latent value (fixed keys, fixed data order).
Then shift = per-channel mean of the latents and scale = 1 / std of the shifted latents
(posterior samples for the KL-VAE), over the first 2048 training images (SD's 0.18215 was
measured the same way, without the shift), and held-out reconstruction metrics: pixel MSE,
PSNR, the MSE of predicting the mean image (the baseline a tokenizer must beat by far) and
the shapes checker's pass rates on the reconstructions (real images pass by construction).
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dream_jax.data import shapes
from dream_jax.pretrained import autoencoder, vae

NORMALISATION_IMAGES = 2048


def render_images(config, n: int, *, heldout: bool):
  """(images [n,S,S,3] float32 in [-1,1], attrs dict of [n,...] int32) of the run's data."""
  d = config.data
  src = shapes.ShapesSource(config.seed, n, d.image_size,
                            offset=shapes.HELDOUT_OFFSET if heldout else 0,
                            max_objects=d.max_objects, two_object_prob=d.two_object_prob)
  recs = [src.load(i) for i in range(n)]
  images = np.stack([r["image"] for r in recs]).astype(np.float32) / 127.5 - 1.0
  attrs = {k: np.stack([r[k] for r in recs]) for k in recs[0] if k.startswith("attrs_")}
  return images, attrs


def fit_pca(model: autoencoder.ImageAutoencoder, images) -> dict:
  """{'mean' [3q^2], 'components' [c, 3q^2]} of the images' q x q patches."""
  x = np.asarray(autoencoder.space_to_depth(jnp.asarray(images), model.q))
  x = x.reshape(-1, x.shape[-1]).astype(np.float64)
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  comps = vt[:model.channels]
  comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
  return dict(mean=mean.astype(np.float32), components=comps.astype(np.float32))


def _vae_loss(model, kl_weight, params, images, rng):
  moments = autoencoder.encode(model.module, params, images, model.q)
  mean, logvar = moments[:, 0], moments[:, 1]
  recon = model.raw_decode(params, vae.sample_posterior(moments, rng))
  mse = jnp.mean((recon - images) ** 2)
  kl = 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
  return mse + kl_weight * kl, (mse, kl)


def fit_kl_vae(config, model: autoencoder.ImageAutoencoder, images, key, log) -> tuple:
  """(params, {'final_train_mse', 'final_kl'}) after tokenizer.ae_steps Adam steps."""
  t = config.tokenizer
  init_key, data_key, noise_key = jax.random.split(key, 3)
  q = model.q
  params = jax.jit(model.module.init)(init_key, jnp.zeros((1, q, q, 3 * q * q)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(t.ae_lr, t.ae_steps, alpha=0.05))
  opt = tx.init(params)
  loss_fn = functools.partial(_vae_loss, model, float(t.ae_kl_weight))

  @jax.jit
  def step(params, opt, batch, rng):
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, aux

  order = np.asarray(jax.random.randint(data_key, (t.ae_steps, t.ae_batch), 0, len(images)))
  t0 = time.time()
  for i in range(t.ae_steps):
    params, opt, (mse, kl) = step(params, opt, images[order[i]],
                                  jax.random.fold_in(noise_key, i))
    if (i + 1) % max(1, t.ae_steps // 5) == 0:
      log(f"tokenizer step {i + 1}/{t.ae_steps}: pixel mse {float(mse):.5f} "
          f"kl {float(kl):.3f} ({time.time() - t0:.0f} s)")
  return params, dict(final_train_mse=float(mse), final_kl=float(kl))


def _batched(fn, *arrays, batch: int = 256):
  n = len(arrays[0])
  return np.concatenate([np.asarray(fn(*(a[i:i + batch] for a in arrays)))
                         for i in range(0, n, batch)])


def fit(config, *, log=print) -> tuple[dict, np.ndarray, float, dict]:
  """(params, shift [c], scale, metrics): fits and measures; writes nothing."""
  t0 = time.time()
  model = autoencoder.ImageAutoencoder(config.tokenizer)
  images, _ = render_images(config, config.tokenizer.ae_train_size, heldout=False)
  key = jax.random.key(config.seed)
  metrics = {}
  if model.model == "pca":
    params = fit_pca(model, images)
  else:
    params, metrics = fit_kl_vae(config, model, images, key, log)
  params = jax.tree.map(jnp.asarray, params)
  sample_key = jax.random.fold_in(key, 1)
  z = _batched(jax.jit(lambda x: model.raw_latents(params, x, sample_key, sample=True)),
               images[:NORMALISATION_IMAGES])
  shift = z.mean(axis=(0, 1, 2)).astype(np.float32)
  scale = float(1.0 / np.std(z - shift))
  metrics.update(evaluate(config, model, params))
  metrics["fit_seconds"] = round(time.time() - t0, 1)
  return params, shift, scale, metrics


def evaluate(config, model, params, n: int = 256) -> dict:
  """Held-out reconstruction metrics (encode without sampling, decode, clip to [-1, 1])."""
  images, attrs = render_images(config, n, heldout=True)
  recon = _batched(jax.jit(lambda x: model.raw_decode(params, model.raw_latents(params, x))),
                   images)
  recon = np.clip(recon, -1.0, 1.0)
  mse = float(np.mean((recon - images) ** 2))
  baseline = float(np.mean((images - images.mean(axis=0)) ** 2))
  checks = shapes.check_batch(recon, attrs)
  return dict(heldout_mse=mse, heldout_psnr=float(10 * np.log10(4.0 / max(mse, 1e-12))),
              mean_image_mse=baseline, recon_color_ok=checks["color_ok"],
              recon_cell_ok=checks["cell_ok"], recon_shape_ok=checks["shape_ok"],
              recon_all_ok=checks["all_ok"], num_heldout=n)


def ensure(config, *, log=print) -> str:
  """The tokenizer directory of `config`, fitted and written first when it is the default
  cache directory and missing. An explicit `tokenizer.path` must exist (FileNotFoundError)."""
  path, is_default = autoencoder.resolve_path(config)
  if autoencoder.is_complete(path):
    return path
  if not is_default:   # raises, naming the path and the command that writes it
    autoencoder.load(path, autoencoder.ImageAutoencoder(config.tokenizer))
  log(f"fitting the autoencoder tokenizer (not cached yet) -> {path}")
  write(config, path, log=log)
  return path


def write(config, path: str, *, log=print) -> dict:
  """Fits and writes the tokenizer directory at `path`; returns its metrics."""
  params, shift, scale, metrics = fit(config, log=log)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  autoencoder.save(path, params, shift=shift, scale=scale,
                   meta=dict(model=config.tokenizer.ae_model,
                             settings=autoencoder.settings(config),
                             settings_hash=autoencoder.settings_hash(config), metrics=metrics))
  log("tokenizer: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in metrics.items()))
  return metrics
