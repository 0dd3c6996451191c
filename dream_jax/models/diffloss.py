"""MAR's DiffLoss glue: per-token diffusion loss for training and token sampling.

Both functions take the head as a plain callable `head_apply(x [M, C] f32, t [M] int32
original timesteps, z [M, Dz]) -> [M, 2C] f32` (e.g. a bound `SimpleMLPAdaLN` or
`functools.partial(head.apply, params)`), and a `GaussianDiffusion` chain:
`GaussianDiffusion.create("")` (1000 steps) for training, `GaussianDiffusion.create("100")`
(respaced) for sampling.

Randomness: the model should pass `self.make_rng('diffusion')` (the 'diffusion' rng stream) as
`rng`; nothing else here draws random numbers.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from dream_jax.diffusion.gaussian import GaussianDiffusion
from dream_jax.models.diffusion_head import apply_with_cfg

Array = jax.Array
HeadApply = Callable[[Array, Array, Array], Array]


def diffusion_loss_terms(head_apply: HeadApply, x0: Array, z: Array, rng: Array,
                         num_timesteps: Optional[int], diffusion: GaussianDiffusion,
                         mul: int = 1, return_terms: bool = False
                         ) -> Union[Array, tuple[Array, dict]]:
  """Per-token diffusion loss (MSE + vb), averaged over `mul` independent (t, noise) draws.

  MAR trains each token with `diffusion_batch_mul` draws by repeating the rows; the repeated
  rows are laid out draw-major ([draw 0: all rows, draw 1: all rows, ...]) and averaged back
  here, which is equivalent to MAR's masked mean over the repeated batch (the mask repeats too).

  Args:
    head_apply: the diffusion head, see the module docstring.
    x0: [N, C] float32 clean tokens.
    z: [N, Dz] per-token condition.
    rng: key of the 'diffusion' stream; split into t (uniform integers in
      [0, num_timesteps)) and noise (N(0, 1), [mul * N, C] float32).
    num_timesteps: range of t; None means `diffusion.num_timesteps` (1000).
    diffusion: the training chain (its `timestep_map` maps t to the head's timestep).
    mul: draws per token (MAR's diffusion_batch_mul; 4 in the paper configs).
    return_terms: also return the [mul * N] 'mse', 'vb', 'loss', 't' of every draw.
  Returns:
    [N] float32 per-token loss (mean over the draws), and the terms dict if requested.
  """
  n = x0.shape[0]
  num_timesteps = diffusion.num_timesteps if num_timesteps is None else num_timesteps
  x0_rep = jnp.tile(x0, (mul, 1))
  z_rep = jnp.tile(z, (mul, 1))
  t_key, noise_key = jax.random.split(rng)
  t = jax.random.randint(t_key, (mul * n,), 0, num_timesteps, dtype=jnp.int32)
  noise = jax.random.normal(noise_key, x0_rep.shape, jnp.float32)
  x_t = diffusion.q_sample(x0_rep, t, noise)
  model_out = head_apply(x_t, diffusion.model_timesteps(t), z_rep)
  terms = diffusion.training_losses(model_out, x0_rep, x_t, t, noise)
  loss = jnp.mean(terms["loss"].reshape(mul, n), axis=0)
  if return_terms:
    return loss, dict(terms, t=t)
  return loss


def sample_tokens(head_apply: HeadApply, z: Array, rng: Array,
                  temperature: Union[float, Array], cfg_scale: Optional[Union[float, Array]],
                  diffusion: GaussianDiffusion, token_dim: int = 16,
                  clip_denoised: Optional[float] = None) -> Array:
  """Samples one token per condition row with the (respaced) reverse chain (MAR's sample).

  Args:
    head_apply: the diffusion head.
    z: [M, Dz] conditions. Without CFG, M = N rows. With CFG, M = 2N: the N conditional rows
      then the N unconditional rows (same token order).
    rng: key of the 'diffusion' stream (initial noise and per-step noise).
    temperature: scales the noise of every step (scalar, may be traced).
    cfg_scale: None for no guidance; else the guidance scale (scalar, may be traced). With CFG
      the initial noise is shared between the halves and the guided eps is used by both.
    diffusion: the sampling chain, e.g. `GaussianDiffusion.create("100")`.
    token_dim: C.
    clip_denoised: None (reference) or clip the predicted x0 to [-c, c] at every step.
  Returns:
    [M, C] float32. With CFG both halves are returned, as MAR does; the caller keeps the first
    N rows (the guided head only ever reads the first half of x, so that half is the sample).
  """
  m = z.shape[0]
  init_key, loop_key = jax.random.split(rng)
  if cfg_scale is None:
    noise = jax.random.normal(init_key, (m, token_dim), jnp.float32)

    def net_fn(x, t):
      return head_apply(x, t, z)
  else:
    half = jax.random.normal(init_key, (m // 2, token_dim), jnp.float32)
    noise = jnp.concatenate([half, half], axis=0)

    def net_fn(x, t):
      return apply_with_cfg(head_apply, x, t, z, cfg_scale, token_dim)

  return diffusion.p_sample_loop(net_fn, (m, token_dim), loop_key, temperature, noise=noise,
                                 clip_denoised=clip_denoised)
