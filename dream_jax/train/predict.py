"""Named predict functions for evaluators (evaluators never see the model).

Every function takes the inference variables `{'params': EMA params, 'batch_stats'}` and a
HOST-LOCAL numpy batch (as `make_dataset(config, 'eval')` yields it) and returns host-local
numpy results for that batch's rows. Inside, the batch is padded to a multiple of the local
device count, laid out over the mesh and the jitted function runs on the global arrays.

  embed_image(variables, batch) -> [b, E] f32   unit-norm image embedding, nothing masked
                                                (ratio 0), BN running statistics
  embed_text(variables, batch)  -> [b, E] f32   unit-norm caption embedding (clip_ids)
  diffusion_loss_at(variables, batch, ratio, seed, other_z=False) -> [b] f32
        per-sample diffusion loss at a FIXED mask ratio: one random set of masked positions
        shared by every sample, t and noise from `seed` (the same every call, so numbers
        are comparable across steps); the true caption (no caption dropout); mean over the
        sample's masked tokens and draws.
        other_z=True returns {'own': [b], 'other': [b]} from ONE encoder/decoder pass:
        'other' gives each sample the decoder condition z of the NEXT sample in the batch
        (same positions, same t and noise); the loss rise measures how much z says about
        this particular image. The masked positions are shared so that a swapped z is
        always a masked position's z (with per-sample masks some would come from a visible
        position of the other sample, and z there can differ for that reason alone).
Sampling functions (`sample`, `sample_sad`, `best_of_k`) come from
`dream_jax.sampling.make_predict_fns` when that module exists.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax import masking
from dream_jax.train import sharding


def _pad_rows(batch: dict, multiple: int) -> tuple[dict, int]:
  b = next(iter(batch.values())).shape[0]
  pad = (-b) % multiple
  if pad == 0:
    return batch, b
  return {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()}, b


def _local_rows(arr) -> np.ndarray:
  """This host's rows of a batch-sharded global array, in order."""
  if jax.process_count() == 1:
    return np.asarray(arr)
  shards = {s.index[0].start or 0: np.asarray(s.data) for s in arr.addressable_shards}
  return np.concatenate([shards[k] for k in sorted(shards)])


def hosted(mesh, fn):
  """Wraps `fn(variables, global_batch, *args)` to take and return host-local numpy rows."""
  def call(variables, batch, *args):
    arrays = {k: np.asarray(v) for k, v in batch.items()
              if np.asarray(v).dtype.kind in "biuf" and np.ndim(v) > 0}
    arrays, b = _pad_rows(arrays, jax.local_device_count())
    out = fn(variables, sharding.global_batch(mesh, arrays), *args)
    return jax.tree.map(lambda o: _local_rows(o)[:b], out)
  return call


def make_predict_fns(components, frozen, mesh) -> dict:
  """The trainer's predict functions (module docstring)."""
  model, text, tok = components.model, components.conditioning, components.image_tokens
  out_sh = sharding.batch_sharding(mesh)

  @functools.partial(jax.jit, out_shardings=out_sh)
  def embed_image(variables, batch):
    tokens = tok.to_tokens(frozen.get("vae"), batch, jax.random.key(0), sample=False)
    visible = jnp.ones(tokens.shape[:2], bool)
    return model.encode_image(variables, tokens, visible, train=False).embedding

  @functools.partial(jax.jit, out_shardings=out_sh)
  def embed_text(variables, batch):
    return text.text_embedding(variables, batch["clip_ids"])

  @functools.partial(jax.jit, static_argnums=(2, 3, 4), out_shardings=out_sh)
  def diffusion_loss_at(variables, batch, ratio: float, seed: int, other_z: bool = False):
    k_order, k_diff = jax.random.split(jax.random.key(seed))
    tokens = tok.to_tokens(frozen.get("vae"), batch, jax.random.key(0), sample=False)
    b, l, _ = tokens.shape
    orders = jnp.broadcast_to(masking.random_orders(k_order, 1, l), (b, l))
    mask = masking.mask_from_orders(orders, masking.num_masked(jnp.full((b,), ratio), l))
    enc = model.encode_image(variables, tokens, ~mask, train=False)
    ctx, ctx_mask = text.condition(variables, frozen, batch, drop=None, train=False)
    z = model.decode(variables, enc.hidden, enc.valid, ctx, ctx_mask, train=False)
    m = mask.astype(jnp.float32)

    def per_sample(z):
      _, per_tok = model.diffusion_loss(variables, z, tokens, m, k_diff)
      return (per_tok * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

    if not other_z:
      return per_sample(z)
    return dict(own=per_sample(z), other=per_sample(jnp.roll(z, 1, axis=0)))

  fns = dict(embed_image=hosted(mesh, embed_image), embed_text=hosted(mesh, embed_text),
             diffusion_loss_at=hosted(mesh, diffusion_loss_at))
  try:
    from dream_jax import sampling
    make = getattr(sampling, "make_predict_fns", None)
  except ImportError:
    make = None
  if make is not None:
    # Frozen params are bound here: evaluators call the sampling fns with frozen=None.
    fns.update(make(model, components.config, tok, text, components.tokenize, frozen=frozen))
  return fns
