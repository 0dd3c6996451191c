"""The small frozen image tokenizer of `tokenizer.kind='autoencoder'`, fitted to the run's
own data: the small-scale analogue of the paper's frozen SD-VAE (256 px -> 32x32x4 latents,
scaled by the measured 0.18215, 2x2 patches -> 16-d tokens).

Both models see the image space-to-depth by q = `tokenizer.ae_patch` (q x q pixels -> 3*q*q
channels, DC-AE's space-to-channel stem) and give latents [B,S/s,S/s,c], c =
`tokenizer.latent_channels`, which are then normalised by a MEASURED per-channel shift and
one scale (like SD's scaling factor, plus centring), so the DREAM tokens have zero mean and
unit variance over the training images (times `tokenizer.ae_token_scale`, 1 by default, a
use-time factor outside the cache key: on the shapes data, 93% black, unit variance puts the
foreground tokens ~15 noise units from the background, so the diffusion head can tell them
apart from x_t alone at all but the noisiest steps):

  'pca'     (`tokenizer.ae_model`, the demo's) the linear autoencoder in closed form: the top
            c principal directions of the q x q x 3 patches (stride s = q). It is the optimum
            of a linear VAE (probabilistic PCA; Lucas et al. 2019), fitted in about a second,
            deterministic, and its reconstruction bounds what any decoder can show.
  'kl_vae'  the SD KL-VAE architecture (`vae.AutoencoderKL`) at a tiny width on the
            space-to-depth input (stride s = q * 2**(len(ae_channels) - 1)), trained by Adam
            on pixel MSE + KL. On this 2-core CPU it did not reach PCA's reconstruction in
            the minute a tokenizer may cost (docs/history/2026-12-01-small-recipe.md).

A fitted tokenizer is a directory (`loading.save_params` layout): `params.msgpack` and
`manifest.json` (model, shift, scale, reconstruction metrics, the settings and their
hash). `tokenizer.path=''` means the cache directory
`<tokenizer.cache_dir or ~/.cache/dream_jax>/tokenizers/ae-<hash>`, keyed by the hash of
everything that determines the weights (tokenizer section, data section, seed), so a changed
setting never reuses a stale file. Fitting lives in `dream_jax/train/tokenizer.py`
(`python -m dream_jax.tools.train_tokenizer`); this module only builds, loads and applies.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.pretrained import loading, vae

FORMAT_VERSION = 1
# The keys that determine the trained weights: changing any of them changes the cache key.
TOKENIZER_KEYS = ("ae_model", "ae_patch", "ae_channels", "ae_groups", "ae_attention", "latent_channels", "vae_stride",
                  "ae_steps", "ae_batch", "ae_lr", "ae_kl_weight", "ae_train_size")
DATA_KEYS = ("name", "image_size", "shapes_size", "max_objects", "two_object_prob")


def arch_of(tok_cfg) -> vae.VAEConfig:
  """The AutoencoderKL architecture of `config.tokenizer` (checked against its stride)."""
  q = int(tok_cfg.ae_patch)
  arch = vae.VAEConfig(in_channels=3 * q * q, out_channels=3 * q * q,
                       block_out_channels=tuple(int(c) for c in tok_cfg.ae_channels),
                       layers_per_block=1, latent_channels=int(tok_cfg.latent_channels),
                       norm_num_groups=int(tok_cfg.ae_groups), scaling_factor=1.0,
                       mid_block_add_attention=bool(tok_cfg.ae_attention))
  if q * arch.stride != tok_cfg.vae_stride:
    raise ValueError(f"config.tokenizer.vae_stride={tok_cfg.vae_stride} but "
                     f"tokenizer.ae_patch={q} and ae_channels={tuple(tok_cfg.ae_channels)} "
                     f"give stride {q * arch.stride}")
  return arch


def space_to_depth(images, q: int):
  """[B,S,S,3] -> [B,S/q,S/q,3*q*q] (pixel unshuffle; exact inverse: depth_to_space)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // q, q, w // q, q, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // q, w // q, q * q * c)


def depth_to_space(x, q: int):
  b, h, w, _ = x.shape
  x = x.reshape(b, h, w, q, q, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * q, w * q, -1)


def settings(config) -> dict:
  """The JSON-able settings that determine the weights (hashed into the cache key)."""
  t, d = config.tokenizer, config.data
  tok = {k: (list(t[k]) if isinstance(t[k], (tuple, list)) else t[k]) for k in TOKENIZER_KEYS}
  return dict(format_version=FORMAT_VERSION, seed=int(config.seed), tokenizer=tok,
              data={k: d[k] for k in DATA_KEYS})


def settings_hash(config) -> str:
  blob = json.dumps(settings(config), sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def default_path(config) -> str:
  root = config.tokenizer.cache_dir or os.path.join(os.path.expanduser("~"), ".cache",
                                                    "dream_jax")
  return os.path.join(root, "tokenizers", f"ae-{settings_hash(config)}")


def resolve_path(config) -> tuple[str, bool]:
  """(directory, is_default): `tokenizer.path`, or the hashed cache directory when empty."""
  if config.tokenizer.path:
    return config.tokenizer.path, False
  return default_path(config), True


def is_complete(directory: str) -> bool:
  return all(os.path.exists(os.path.join(directory, f))
             for f in ("params.msgpack", "manifest.json"))


HINT = ("Train one with `python -m dream_jax.tools.train_tokenizer --config=<the run's config>` "
        "(writes the directory named by tokenizer.path, or the cache when it is empty).")


def save(directory: str, params, *, shift, scale: float, meta: dict) -> None:
  """Writes the tokenizer directory (params + manifest with shift/scale/meta), atomically:
  a reader never sees half a tokenizer, and of several writers (hosts) the first one wins."""
  import shutil
  tmp = f"{directory}.tmp{os.getpid()}"
  loading.save_params(tmp, params, dict(meta, kind="autoencoder",
                                        shift=[float(s) for s in np.asarray(shift)],
                                        scale=float(scale)))
  if is_complete(directory):      # another writer finished first: same settings, same fit
    shutil.rmtree(tmp)
    return
  if os.path.exists(directory):   # an incomplete earlier attempt
    shutil.rmtree(directory)
  os.replace(tmp, directory)


def load(directory: str, model: "ImageAutoencoder") -> tuple[dict, dict]:
  """(frozen, manifest): frozen = {'params', 'shift' [c] f32, 'scale' [] f32}.

  Raises FileNotFoundError when the directory or a file is missing and ValueError when the
  files cannot be read or do not match the configured architecture; both name the path.
  """
  if not is_complete(directory):
    raise FileNotFoundError(f"config.tokenizer.path={directory!r}: no trained autoencoder "
                            f"tokenizer there (needs params.msgpack and manifest.json). {HINT}")
  try:
    manifest = loading.read_json(os.path.join(directory, "manifest.json"))
    params = loading.load_converted_params(directory)
    shift = np.asarray(manifest["shift"], np.float32)
    scale = np.float32(manifest["scale"])
  except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
    raise ValueError(f"config.tokenizer.path={directory!r}: unreadable autoencoder tokenizer "
                     f"({type(e).__name__}: {e}). Delete it and retrain. {HINT}") from e
  want = jax.tree.map(lambda a: tuple(a.shape), model.param_shapes())
  got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
  if want != got or shift.shape != (model.channels,) or manifest.get("model") != model.model:
    raise ValueError(f"config.tokenizer.path={directory!r}: the stored tokenizer does not "
                     f"match tokenizer.ae_model/ae_patch/ae_channels/ae_groups/"
                     f"latent_channels. {HINT}")
  frozen = dict(params=jax.tree.map(jnp.asarray, params), shift=jnp.asarray(shift),
                scale=jnp.asarray(scale))
  return frozen, manifest


def frozen_shapes(model: "ImageAutoencoder") -> dict:
  """ShapeDtypeStructs of `load`'s frozen tree (AOT compiles)."""
  return dict(params=model.param_shapes(),
              shift=jax.ShapeDtypeStruct((model.channels,), jnp.float32),
              scale=jax.ShapeDtypeStruct((), jnp.float32))


MODELS = ("pca", "kl_vae")


class ImageAutoencoder:
  """Applies a fitted autoencoder tokenizer; pure functions of the frozen tree.

  raw_latents(frozen, images [B,S,S,3] in [-1,1], rng, sample) -> [B,h,w,c] float32 UNscaled
      (kl_vae: a posterior sample when `sample` and tokenizer.sample_posterior, else the
      mean; pca: the projection)
  latents(...) -> the same, normalised: (raw - shift) * scale
  decode_latents(frozen, normalised latents [B,h,w,c]) -> images [B,S,S,3] float32 (~[-1,1])
  pca params: {'mean' [3q^2], 'components' [c, 3q^2]} (orthonormal rows).
  """

  def __init__(self, tok_cfg):
    self.model = tok_cfg.ae_model
    if self.model not in MODELS:
      raise ValueError(f"config.tokenizer.ae_model={self.model!r}: expected one of {MODELS}")
    self.q = int(tok_cfg.ae_patch)
    self.channels = int(tok_cfg.latent_channels)
    self.sample_posterior = bool(tok_cfg.sample_posterior)
    self.token_scale = float(tok_cfg.ae_token_scale)
    if self.model == "kl_vae":
      self.arch = arch_of(tok_cfg)
      self.module = vae.AutoencoderKL(self.arch, jnp.dtype(tok_cfg.dtype))

  def param_shapes(self):
    if self.model == "pca":
      d = 3 * self.q * self.q
      return dict(mean=jax.ShapeDtypeStruct((d,), jnp.float32),
                  components=jax.ShapeDtypeStruct((self.channels, d), jnp.float32))
    return vae.vae_param_shapes(self.arch, image_size=self.arch.stride)

  def raw_latents(self, params, images, rng=None, sample: bool = False):
    if self.model == "pca":
      x = space_to_depth(images, self.q)
      return jnp.einsum("bhwd,cd->bhwc", x - params["mean"], params["components"])
    moments = encode(self.module, params, images, self.q)
    if sample and self.sample_posterior:
      return vae.sample_posterior(moments, rng)
    return moments[:, 0]

  def raw_decode(self, params, latents):
    if self.model == "pca":
      x = jnp.einsum("bhwc,cd->bhwd", latents, params["components"]) + params["mean"]
      return depth_to_space(x, self.q)
    return decode(self.module, params, latents, self.q)

  def latents(self, frozen, images, rng, sample: bool):
    """Normalised latents [B,h,w,c] (a posterior sample in training, as the paper's VAE)."""
    z = self.raw_latents(frozen["params"], images, rng, sample)
    return (z - frozen["shift"]) * (frozen["scale"] * self.token_scale)

  def decode_latents(self, frozen, latents):
    return self.raw_decode(frozen["params"],
                           latents / (frozen["scale"] * self.token_scale) + frozen["shift"])


def encode(module, params, images, q: int):
  """images [B,S,S,3] -> moments [B,2,S/s,S/s,c] (UNscaled) of AutoencoderKL `module`."""
  return module.apply({"params": params}, space_to_depth(images, q),
                      method=vae.AutoencoderKL.encode)


def decode(module, params, latents, q: int):
  """UNscaled latents [B,h,w,c] -> images [B,S,S,3] float32."""
  return depth_to_space(module.apply({"params": params}, latents,
                                     method=vae.AutoencoderKL.decode), q)
