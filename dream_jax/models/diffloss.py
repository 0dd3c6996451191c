"""MAR's DiffLoss in one place: the per-token diffusion head's training loss and its sampling
chain, both bucketed to static row counts (reference: LTH14/mar `models/diffloss.py`).

The head network itself (`SimpleMLPAdaLN`, diffusion_head.py) is a submodule of the DREAM
module (parameters under 'diffloss'); `DiffLoss` receives it as a plain callable
`head_apply(x [M, C] f32, t [M] int32 original timesteps, z [M, Dz]) -> [M, 2C] f32`.

  DiffLoss(token_dim=, head=config.model.head section values ...)
  .loss(head_apply, z [B,L,Dz], target [B,L,C], weights [B,L], rng) -> (loss, per_token [B,L])
  .sample(head_apply, z [N,Dz], rng, temperature=, cfg_scale=, num_steps=) -> x0 [N, C]

Bucketing (`bucket_sizes`, `bucketed`): a dynamic count (counting tokens of the loss, visible
tokens of the encoder, revealed tokens of a decoding step) is rounded up to one of a few
static sizes and `lax.switch` runs only that size's branch, so work scales with the count.

Randomness: `rng` is the 'diffusion' stream; nothing else here draws random numbers.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from dream_jax.diffusion.gaussian import GaussianDiffusion
from dream_jax.models import layers
from dream_jax.models.buckets import bucket_sizes, bucketed, partition, permute_rows
from dream_jax.models.diffusion_head import apply_with_cfg

Array = jax.Array
# head_apply(x, t, z, z_embedded=False) -> [N, 2C]: `DreamModel.diffusion_net` with its
# variables bound (the forms of `SimpleMLPAdaLN.__call__`: x=None returns cond_embed(z) only).
HeadApply = Callable[..., Array]


# ---------------------------------------------------------------------------- loss
def draw_losses(head_apply: HeadApply, diffusion: GaussianDiffusion, x0: Array, z: Array,
                t: Array, noise: Array) -> dict:
  """Diffusion loss terms of `mul` draws per row (MAR's repeated batch, draw-major).

  Args: x0 [n, C] f32 clean tokens; z [n, Dz]; t [mul, n] int32 timesteps of the original
  chain; noise [mul, n, C] f32. Returns the 'mse', 'vb', 'loss' terms, each [mul, n].
  """
  mul, n = t.shape
  c = x0.shape[-1]
  x_rep, z_rep = jnp.tile(x0, (mul, 1)), jnp.tile(z, (mul, 1))
  tf, nf = t.reshape(-1), noise.reshape(-1, c)
  x_t = diffusion.q_sample(x_rep, tf, nf)
  out = head_apply(x_t, diffusion.model_timesteps(tf), z_rep)
  terms = diffusion.training_losses(out, x_rep, x_t, tf, nf)
  return {k: terms[k].reshape(mul, n) for k in ("mse", "vb", "loss")}


class DiffLoss:
  """The head's training and sampling chains with their static bucketing (module docstring).

  Args (all from `config.model`, plus `sampling.clip_denoised`): token_dim C;
  num_train_timesteps, noise_schedule, prediction, loss_space (the training chain,
  diffusion/gaussian.py); num_sampling_steps (default respacing of the sampling chain);
  batch_mul (draws per token); buckets (static row counts of the loss);
  clip_denoised (None, or clip the predicted x0 to [-c, c] while sampling);
  t_sampling, t_logit_mean, t_logit_std (how training draws t: 'uniform' over the chain's
  steps, MAR / the paper; or 'logit_normal', t / T = sigmoid(mean + std * n), n ~ N(0, 1),
  Esser et al. 2024 (SD3), which with mean > 0 puts more draws at high noise).
  """

  def __init__(self, *, token_dim: int, num_train_timesteps: int, noise_schedule: str,
               prediction: str, loss_space: str, num_sampling_steps: str, batch_mul: int,
               buckets: int, clip_denoised: Optional[float], t_sampling: str = "uniform",
               t_logit_mean: float = 0.0, t_logit_std: float = 1.0):
    if t_sampling not in ("uniform", "logit_normal"):
      raise ValueError(f"DiffLoss: t_sampling must be 'uniform' or 'logit_normal', "
                       f"got {t_sampling!r}")
    self.token_dim = int(token_dim)
    self.t_sampling = t_sampling
    self.t_logit_mean, self.t_logit_std = float(t_logit_mean), float(t_logit_std)
    self._chain = functools.partial(
        GaussianDiffusion.create, noise_schedule=noise_schedule,
        diffusion_steps=num_train_timesteps, prediction=prediction, loss_space=loss_space)
    self.train_diffusion = self._chain("")
    self.num_sampling_steps = str(num_sampling_steps)
    self.batch_mul = int(batch_mul)
    self.buckets = int(buckets)
    self.clip_denoised = clip_denoised
    self._sample_chains = {}

  def sample_diffusion(self, num_steps: Optional[str] = None) -> GaussianDiffusion:
    """The respaced chain for `num_steps` (a space_timesteps spec; default the config's)."""
    key = str(num_steps or self.num_sampling_steps)
    if key not in self._sample_chains:
      self._sample_chains[key] = self._chain(key)
    return self._sample_chains[key]

  def loss(self, head_apply: HeadApply, z: Array, target: Array, weights: Array, rng: Array,
           max_per_sample: Optional[int] = None):
    """Weighted diffusion loss computed ONLY on tokens with weight > 0.

    t and noise are drawn for every (token, draw) at full shape and the counting rows are
    gathered into a static bucket, so the loss and gradients equal the reference's
    compute-everything-then-mask, with the head's FLOPs proportional to the counting tokens.

    Args:
      z: [B, L, Dz] decoder conditions; target: [B, L, C] clean tokens;
      weights: [B, L] f32 (e.g. masked * gate / count); rng: the 'diffusion' stream.
      max_per_sample: a static bound on every sample's count of weight > 0 tokens (a fixed
        mask ratio): the head then runs on that many rows per sample, with no bucket switch.
    Returns:
      (sum(weights * per_token_loss), per_token_loss [B, L] (mean over the `batch_mul`
      draws; 0 where weight == 0)).
    """
    b, l, c = target.shape
    n, mul = b * l, self.batch_mul
    diff = self.train_diffusion
    k_t, k_n = jax.random.split(rng)
    t = self.draw_timesteps(k_t, (mul, n))
    noise = jax.random.normal(k_n, (mul, n, c), jnp.float32)
    # Rows are selected within G groups of whole samples, G = the batch shards of the mesh
    # in scope (1 without one): each device gathers its own counting rows and the head's
    # rows stay on the device that holds them (no all-to-all). Same loss for any G: every
    # counting row is in its group's bucket, t and noise follow the row; only the
    # summation order differs.
    g = layers.batch_shards(b)
    ng = n // g
    w = weights.reshape(g, ng)
    t = t.reshape(mul, g, ng).swapaxes(0, 1)                        # [G, mul, ng]
    noise = noise.reshape(mul, g, ng, c).swapaxes(0, 1)             # [G, mul, ng, C]
    zf, xf = z.reshape(g, ng, -1), target.reshape(g, ng, c).astype(jnp.float32)

    # Counting rows first (stable partition, no sort), gathered once outside the buckets:
    # a branch of size k takes the first k rows, so it holds only the head's layers.
    rows, inv = partition(w > 0)                                    # [G, ng] each
    zs, xs, ws = permute_rows(zf, rows, inv), permute_rows(xf, rows, inv), \
        permute_rows(w[..., None], rows, inv)[..., 0]
    ts = permute_rows(t.swapaxes(1, 2), rows, inv).swapaxes(1, 2)   # [G, mul, ng]
    ns = permute_rows(noise.swapaxes(1, 2), rows, inv).swapaxes(1, 2)

    def run(k, ws, zs, xs, ts, ns):
      tile = lambda a: jnp.broadcast_to(a[:, None], (g, mul) + a.shape[1:])
      # Group-major rows [G * mul * k, ...]: split over the batch axes like the samples.
      flat = lambda a: layers.constrain_batch(a.reshape((g * mul * k,) + a.shape[3:]))
      rz, rx = flat(tile(zs[:, :k])), flat(tile(xs[:, :k]))
      rt, rn = flat(ts[:, :, :k]), flat(ns[:, :, :k])
      x_t = diff.q_sample(rx, rt, rn)
      out = head_apply(x_t, diff.model_timesteps(rt), rz)
      terms = diff.training_losses(out, rx, x_t, rt, rn)
      rw = ws[:, :k]
      per_row = jnp.where(rw > 0, terms["loss"].reshape(g, mul, k).mean(1), 0.0)
      return (rw * per_row).sum(), jnp.pad(per_row, ((0, 0), (0, ng - k)))

    if max_per_sample is not None:
      loss, per_sorted = run(max(1, min(ng, (b // g) * int(max_per_sample))), ws, zs, xs, ts, ns)
    else:
      sizes = bucket_sizes(ng, self.buckets)
      loss, per_sorted = bucketed((w > 0).sum(1).max(), sizes, run, ws, zs, xs, ts, ns)
    per_tok = permute_rows(per_sorted[..., None], inv, rows)[..., 0]  # back to row order
    return loss, per_tok.reshape(b, l)

  def draw_timesteps(self, rng: Array, shape: Sequence[int]) -> Array:
    """Training timesteps [shape] int32 in [0, T) of the training chain (class docstring).

    The draw distribution is a per-t loss weighting (Kingma & Gao 2023): it changes which
    noise levels the head, and through it the condition z, learns most from; the sampler
    is unchanged.
    """
    num = self.train_diffusion.num_timesteps
    if self.t_sampling == "uniform":
      return jax.random.randint(rng, shape, 0, num)
    u = jax.nn.sigmoid(self.t_logit_mean
                       + self.t_logit_std * jax.random.normal(rng, shape, jnp.float32))
    return jnp.clip(jnp.floor(u * num), 0, num - 1).astype(jnp.int32)

  # ------------------------------------------------------------------ sample
  def sample(self, head_apply: HeadApply, z: Array, rng: Array, *,
             temperature: Union[float, Array] = 1.0,
             cfg_scale: Optional[Union[float, Array]] = None,
             num_steps: Optional[str] = None) -> Array:
    """Samples clean tokens for conditions z with the respaced chain (MAR's `sample`).

    With `cfg_scale`, z holds the conditional rows then the unconditional rows ([2N, Dz]);
    both halves share x_t and the noise, the guided eps is used for both, the variance is
    not guided (MAR `forward_with_cfg`); the result is the conditional half [N, C].
    Without, z is [N, Dz] and the result [N, C]. The predicted x0 is clipped only when
    `clip_denoised` is set (None in paper configs, as the reference).
    """
    out = sample_tokens(head_apply, z, rng, temperature, cfg_scale,
                        self.sample_diffusion(num_steps), self.token_dim, self.clip_denoised)
    return out if cfg_scale is None else out[: z.shape[0] // 2]


def sample_tokens(head_apply: HeadApply, z: Array, rng: Array,
                  temperature: Union[float, Array], cfg_scale: Optional[Union[float, Array]],
                  diffusion: GaussianDiffusion, token_dim: int,
                  clip_denoised: Optional[float] = None) -> Array:
  """One token per condition row with the (respaced) reverse chain, both CFG halves.

  Args:
    z: [M, Dz] conditions. Without CFG, M = N rows. With CFG, M = 2N: the N conditional rows
      then the N unconditional rows (same token order).
    rng: key of the 'diffusion' stream (initial noise and per-step noise).
    temperature: scales the noise of every step (scalar, may be traced).
    cfg_scale: None for no guidance; else the guidance scale (scalar, may be traced). With CFG
      the initial noise is shared between the halves and the guided eps is used by both.
    diffusion: the sampling chain, e.g. `GaussianDiffusion.create("100")`.
    clip_denoised: None (reference) or clip the predicted x0 to [-c, c] at every step.
  Returns:
    [M, C] float32 (with CFG the guided head only ever reads the first half of x, so that
    half is the sample).
  """
  m = z.shape[0]
  init_key, loop_key = jax.random.split(rng)
  # Every step of the chain runs the head on the same z and on one timestep for all rows:
  # cond_embed(z) is computed once here, and the time embedding on one row per step
  # (same values; at the anchor shapes these Linears are ~15% of the head's work).
  c = head_apply(None, None, z)

  def head(x, t, c):
    return head_apply(x, t[0], c, z_embedded=True)

  if cfg_scale is None:
    noise = jax.random.normal(init_key, (m, token_dim), jnp.float32)

    def net_fn(x, t):
      return head(x, t, c)
  else:
    half = jax.random.normal(init_key, (m // 2, token_dim), jnp.float32)
    noise = jnp.concatenate([half, half], axis=0)

    def net_fn(x, t):
      return apply_with_cfg(head, x, t, c, cfg_scale, token_dim)

  return diffusion.p_sample_loop(net_fn, (m, token_dim), loop_key, temperature, noise=noise,
                                 clip_denoised=clip_denoised)
