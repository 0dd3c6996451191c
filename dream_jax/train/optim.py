"""AdamW with the reference's weight-decay exemptions, global-norm clipping, and the EMA.

The learning rate is NOT inside the optax chain: the update step multiplies the direction by
`TrainSchedule(step)['lr']`, the same call that yields the mask-ratio centre, so the two
schedules share one step counter by construction. The chain therefore ends in the
decoupled weight decay (AdamW: p -= lr * (adam_direction + wd * p), as torch.optim.AdamW).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax



def make_optimizer(config) -> optax.GradientTransformation:
  """clip_by_global_norm(grad_clip) -> Adam(b1, b2) -> + wd * p on decayed params.

  The decay mask is `weight_decay_mask` (reference: no decay on `.bias`, 1-D
  params and the whole diffusion head; logit scale and embeddings ARE decayed).
  """
  o = config.optim
  parts = []
  if o.grad_clip:
    parts.append(optax.clip_by_global_norm(float(o.grad_clip)))
  if o.moment_dtype == "float32":
    parts.append(optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2), eps=float(o.eps)))
  else:
    parts.append(scale_by_adam_stored_as(float(o.b1), float(o.b2), float(o.eps),
                                         jnp.dtype(o.moment_dtype)))
  if o.weight_decay:
    parts.append(optax.add_decayed_weights(float(o.weight_decay),
                                           mask=lambda p: weight_decay_mask(p, config)))
  return optax.chain(*parts)


def scale_by_adam_stored_as(b1: float, b2: float, eps: float,
                            dtype) -> optax.GradientTransformation:
  """Adam's direction with both moments STORED in `dtype` (e.g. bfloat16), computed in fp32.

  Halves the optimiser state of large runs (2 x 4 -> 2 x 2 bytes per parameter). The state is
  optax's `ScaleByAdamState(count, mu, nu)`, so checkpoints and sharding rules see the same
  tree as with `optax.scale_by_adam`; only the leaf dtypes differ. Each step upcasts mu and nu,
  applies the fp32 update and bias correction, and rounds the new moments to `dtype`
  (round-to-nearest; bf16 keeps fp32's exponent range, so nu never underflows earlier).
  """
  def init(params):
    zeros = lambda p: jnp.zeros(p.shape, dtype)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=jax.tree.map(zeros, params),
                                  nu=jax.tree.map(zeros, params))

  def update(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    f32 = lambda x: x.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: b1 * f32(m) + (1.0 - b1) * f32(g), state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * f32(v) + (1.0 - b2) * jnp.square(f32(g)),
                      state.nu, updates)
    c = count.astype(jnp.float32)
    mu_corr, nu_corr = 1.0 - b1 ** c, 1.0 - b2 ** c
    direction = jax.tree.map(
        lambda m, v, g: ((m / mu_corr) / (jnp.sqrt(v / nu_corr) + eps)).astype(g.dtype),
        mu, nu, updates)
    low = lambda t: jax.tree.map(lambda x: x.astype(dtype), t)
    return direction, optax.ScaleByAdamState(count=count, mu=low(mu), nu=low(nu))

  return optax.GradientTransformation(init, update)


def apply_lr(updates, lr, head_lr_mult: float = 1.0):
  """Direction -> parameter delta (-lr * direction), in the parameter dtype.

  `head_lr_mult` (config.optim.head_lr_mult; 1.0 in paper configs) scales the step of the
  diffusion head's parameters (the `diffloss` subtree). MAR's head starts with zero-initialised
  adaLN gates and output layer, which Adam grows by about lr per step; a short run needs them
  to grow faster than the transformer's weights (configs/demo.py).
  """
  def delta(path, u):
    in_head = any(getattr(k, "key", None) == "diffloss" for k in path)
    return (-(lr * head_lr_mult if in_head else lr) * u).astype(u.dtype)

  return jax.tree_util.tree_map_with_path(delta, updates)


def ema_decay(config, step):
  """EMA decay at `step` (0-based): ema.decay, or min(decay, (1+t)/(10+t)) with warm-up.

  The warm-up (a small-run deviation from the paper's fixed 0.9999) lets the EMA follow the
  weights early, so a few-thousand-step run evaluates trained weights, not the init.
  """
  d = jnp.float32(config.ema.decay)
  if config.ema.warmup:
    t = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(d, (1.0 + t) / (10.0 + t))
  return d


def update_ema(ema_params, params, decay):
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
                      ema_params, params)


def global_norm(tree):
  return optax.tree.norm(tree)


def weight_decay_mask(params, config):
  """True where AdamW decays, reproducing the reference by MEANING.

  The reference exempts parameters whose names end in `.bias`, 1-D parameters (LayerNorm /
  BatchNorm scales) and the whole diffusion head, and therefore DOES decay the scalar logit
  scale, position embeddings, mask token, buffer and token embeddings. Config flags turn the
  decay of the logit scale / embeddings off (deviations from the paper; off in paper configs).
  """
  o = config.optim
  embed_names = {"buffer_embed", "encoder_pos_embed", "decoder_pos_embed", "mask_token",
                 "diffusion_pos_embed", "text_pos_embed", "token_embedding",
                 "positional_embedding", "pos_embed"}

  def decide(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    name = names[-1]
    if "diffloss" in names:
      return False
    if name == "logit_scale":
      return bool(o.decay_logit_scale)
    if name in embed_names:
      return bool(o.decay_embeddings)
    if name == "bias" or np.ndim(leaf) == 1:
      return False
    return True

  return jax.tree_util.tree_map_with_path(decide, params)
