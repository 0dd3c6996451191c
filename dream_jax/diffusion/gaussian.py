"""Gaussian diffusion process of the MAR diffusion head (improved-DDPM, as in MAR / DiT).

What this implements, and the details that decide parity with the reference:

* Betas: the cosine alpha-bar schedule (Nichol & Dhariwal), each beta clipped at 0.999, built
  in float64 with numpy. The last cumulative alpha is therefore ~2.4e-9, not 0.
* Every process is a *spaced* process, as in MAR: even the 1000-step training chain is built by
  `space_timesteps(1000, "1000")`, which recomputes each beta as 1 - abar_i / abar_{i-1}. That
  re-derivation changes betas by float64 rounding, and the reference tables are the re-derived
  ones.
* All coefficient tables are float64 (numpy). Exactly like the reference's
  `_extract_into_tensor`, a coefficient is gathered at t and cast to float32 *before* it is used;
  the arithmetic on activations is float32.
* The model predicts epsilon (channels 0..C-1) and a learned variance interpolation value v in
  [-1, 1] (channels C..2C-1): log var = frac * log(beta_t) + (1 - frac) * clipped posterior
  log var, frac = (v + 1) / 2.
* `training_losses` returns `mse` (eps MSE, mean over channels), `vb` (variational term in
  bits with the eps output's gradient stopped, the improved-DDPM "frozen_out" trick; at t = 0
  the discretised-Gaussian decoder NLL) and `loss = mse + vb`.
* Options, off in paper configs (`prediction='eps'`, `loss_space='eps'`, the reference):
  `prediction='x0'` reads channels 0..C-1 as the clean token (improved-DDPM START_X), and
  `loss_space='v'` takes the MSE on v = sqrt(abar) eps - sqrt(1 - abar) x0, i.e. eps MSE +
  x0 MSE. Per token, eps MSE = SNR(t) * x0 MSE: at high noise the eps loss barely depends on
  the clean token, so the head learns to use its condition z there only slowly. For
  low-dimensional pixel tokens (flat colour patches, which x_t reveals at moderate noise) that
  is the whole signal; x0 prediction with the v loss ("Back to Basics", Li & He 2025) gives it
  weight 1. Measured on the CPU demo (README, "Options for small pixel-token runs"): z
  becomes more informative, but after 300 steps the samples are noisier than with eps.
  `prediction='v'` reads them as the velocity v (Salimans & Ho 2022), x0 = sqrt(abar) x_t -
  sqrt(1 - abar) v; with `loss_space='v'` the MSE is on v itself. At high noise the head then
  regresses -x0 from z, at low noise it predicts ~eps, and the predicted x0 stays bounded at
  the first sampling steps, where eps prediction divides its error by sqrt(abar) ~ 5e-5
  (docs/history/2026-12-02-paper-loss-generation.md).
* A respaced chain (e.g. 50 or 100 of 1000 steps) keeps the original timesteps in
  `timestep_map`; the network must be called with `timestep_map[t]`, never with the respaced
  index t. Sampling clips the predicted x0 only when asked (`clip_denoised`; never in the
  reference).

Timesteps `t` passed to the methods below are indices into *this* chain (0 .. T-1), int32 [N].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# --------------------------------------------------------------------------------------------
# Schedules and respacing (float64 numpy, built once on the host).
# --------------------------------------------------------------------------------------------

def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
  """Betas discretising a continuous alpha-bar(t), t in [0, 1]; each beta clipped at max_beta.

  Returns [num_timesteps] float64. Python floats (float64) throughout, as the reference.
  """
  betas = []
  for i in range(num_timesteps):
    t1 = i / num_timesteps
    t2 = (i + 1) / num_timesteps
    betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
  return np.array(betas, dtype=np.float64)


def get_named_beta_schedule(schedule_name: str, num_timesteps: int) -> np.ndarray:
  """'cosine' (improved DDPM, offset s = 0.008) or 'linear' (Ho et al., rescaled to T steps).

  Returns [num_timesteps] float64.
  """
  if schedule_name == "linear":
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
  if schedule_name == "cosine":
    return betas_for_alpha_bar(
        num_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
  raise NotImplementedError(f"unknown beta schedule: {schedule_name}")


def space_timesteps(num_timesteps: int,
                    section_counts: Union[str, int, Sequence[int]]) -> list[int]:
  """Timesteps of the original process kept by a respaced process (improved-DDPM rule).

  The original process is cut into len(section_counts) equal sections and section i keeps
  section_counts[i] steps at a fractional stride, rounded (Python's round: half to even).
  For 100 of 1000 this gives 0, 10, 20, ..., 50, 61, 71, ...; for 50 of 1000: 0, 20, 41, 61,
  82, ... -- not a fixed integer stride. "ddimN" picks the integer stride giving exactly N steps.

  Args:
    num_timesteps: steps of the original process.
    section_counts: "100", "10,15,20", "ddim50", an int or a list of ints.
  Returns:
    Sorted list of kept original timesteps.
  """
  if isinstance(section_counts, int):
    section_counts = [section_counts]
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired_count = int(section_counts[len("ddim"):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired_count:
          return list(range(0, num_timesteps, stride))
      raise ValueError(f"cannot create exactly {desired_count} steps with an integer stride")
    section_counts = [int(x) for x in section_counts.split(",")]
  size_per = num_timesteps // len(section_counts)
  extra = num_timesteps % len(section_counts)
  start_idx = 0
  all_steps = []
  for i, section_count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < section_count:
      raise ValueError(f"cannot divide section of {size} steps into {section_count}")
    frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
    cur_idx = 0.0
    for _ in range(section_count):
      all_steps.append(start_idx + round(cur_idx))
      cur_idx += frac_stride
    start_idx += size
  return sorted(set(all_steps))


# --------------------------------------------------------------------------------------------
# Elementwise helpers (float32 jnp).
# --------------------------------------------------------------------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF used by improved DDPM."""
  return 0.5 * (1.0 + jnp.tanh(np.float32(math.sqrt(2.0 / math.pi))
                               * (x + 0.044715 * x * x * x)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-likelihood (nats) of x under a Gaussian discretised into 2/255-wide bins.

  Values below -0.999 (above 0.999) take the whole lower (upper) tail, as the reference, which
  assumes data in [-1, 1]. All arrays [N, C] float32; returns [N, C].
  """
  centered_x = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# --------------------------------------------------------------------------------------------
# The process.
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """A (possibly respaced) Gaussian diffusion chain with float64 coefficient tables.

  Build it with `GaussianDiffusion.create(...)`. Tables are numpy float64 [T]; they become
  float32 jit constants when gathered (`_coef`). `eq=False` keeps the object hashable by
  identity, so it can be closed over or passed as a static argument.

  Fields:
    betas: [T] float64 betas of this chain (respaced betas for a respaced chain).
    timestep_map: [T] int64 original timestep of each step; the network is called with it.
    original_num_steps: length of the chain the timesteps refer to (1000).
  """
  betas: np.ndarray
  timestep_map: np.ndarray
  original_num_steps: int
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray
  log_betas: np.ndarray
  prediction: str = "eps"     # what channels 0..C-1 of the head output are: 'eps' | 'x0' | 'v'
  loss_space: str = "eps"     # where the MSE is taken: 'eps' (reference) | 'v' | 'x0'

  # ---- construction ------------------------------------------------------------------------

  @classmethod
  def from_betas(cls, betas: np.ndarray, timestep_map=None,
                 original_num_steps: int | None = None, *, prediction: str = "eps",
                 loss_space: str = "eps") -> "GaussianDiffusion":
    """Derives all tables from float64 betas, with the reference's formulas."""
    if prediction not in ("eps", "x0", "v"):
      raise ValueError(f"diffusion prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
    if loss_space not in ("eps", "v", "x0"):
      raise ValueError(f"diffusion loss space must be 'eps', 'v' or 'x0', got {loss_space!r}")
    betas = np.asarray(betas, dtype=np.float64)
    assert betas.ndim == 1 and (betas > 0).all() and (betas <= 1).all()
    t_count = betas.shape[0]
    if t_count < 2:
      # The clipped posterior log-variance repeats entry 1 (reference): undefined for 1 step.
      raise ValueError(f"a diffusion chain needs at least 2 steps, got {t_count} (e.g. "
                       "sampling.num_diffusion_steps = '1')")
    if timestep_map is None:
      timestep_map = np.arange(t_count)
    timestep_map = np.asarray(timestep_map, dtype=np.int64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at t = 0; its log is clipped by repeating entry 1.
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    return cls(
        betas=betas,
        timestep_map=timestep_map,
        original_num_steps=int(original_num_steps or t_count),
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        log_betas=np.log(betas),
        prediction=prediction,
        loss_space=loss_space,
    )

  @classmethod
  def create(cls, timestep_respacing: Union[str, int, Sequence[int], None] = "",
             noise_schedule: str = "cosine",
             diffusion_steps: int = 1000, *, prediction: str = "eps",
             loss_space: str = "eps") -> "GaussianDiffusion":
    """MAR's `create_diffusion` (learned-range variance, eps prediction, MSE + vb loss).

    Args:
      timestep_respacing: "" or None for the full chain (MAR's train_diffusion), else e.g.
        "100" / "50" / "ddim25" (MAR's gen_diffusion).
      noise_schedule: 'cosine' (MAR) or 'linear'.
      diffusion_steps: length of the original chain.
      prediction, loss_space: see the module docstring ('eps', 'eps' in the reference).
    """
    base_betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
    if timestep_respacing is None or timestep_respacing == "":
      timestep_respacing = [diffusion_steps]
    use = set(space_timesteps(diffusion_steps, timestep_respacing))
    # The respaced betas are re-derived from the base chain's cumulative alphas even when every
    # step is kept; the reference (SpacedDiffusion) does the same.
    base_ac = np.cumprod(1.0 - base_betas, axis=0)
    last_ac = 1.0
    new_betas, timestep_map = [], []
    for i, ac in enumerate(base_ac):
      if i in use:
        new_betas.append(1 - ac / last_ac)
        last_ac = ac
        timestep_map.append(i)
    return cls.from_betas(np.array(new_betas), timestep_map, diffusion_steps,
                          prediction=prediction, loss_space=loss_space)

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])

  # ---- gathers -----------------------------------------------------------------------------

  @staticmethod
  def _coef(table: np.ndarray, t: Array) -> Array:
    """table[t] cast to float32, shaped [N, 1] to broadcast over channels (t: [N] int)."""
    return jnp.asarray(table.astype(np.float32))[t][:, None]

  def model_timesteps(self, t: Array) -> Array:
    """Original timesteps [N] int32 for chain indices t [N]: what the network must be fed."""
    return jnp.asarray(self.timestep_map.astype(np.int32))[t]

  # ---- forward process ---------------------------------------------------------------------

  def q_sample(self, x_start: Array, t: Array, noise: Array) -> Array:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x_start, noise [N, C] f32; t [N]."""
    return (self._coef(self.sqrt_alphas_cumprod, t) * x_start
            + self._coef(self.sqrt_one_minus_alphas_cumprod, t) * noise)

  def q_posterior_mean_variance(self, x_start: Array, x_t: Array, t: Array):
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0); each [N, C]/[N, 1]."""
    mean = (self._coef(self.posterior_mean_coef1, t) * x_start
            + self._coef(self.posterior_mean_coef2, t) * x_t)
    return (mean, self._coef(self.posterior_variance, t),
            self._coef(self.posterior_log_variance_clipped, t))

  # ---- reverse process ---------------------------------------------------------------------

  def p_mean_variance(self, model_out: Array, x_t: Array, t: Array,
                      clip_denoised: Optional[float] = None) -> dict:
    """p(x_{t-1} | x_t) from the head output; by default no clipping of the predicted x0.

    Args:
      model_out: [N, 2C] float32 head output at (x_t, timestep_map[t]): eps (or x0, with
        prediction='x0') | v.
      x_t: [N, C] float32.
      t: [N] int chain indices.
      clip_denoised: None (reference, paper configs) or c: clip pred_xstart to [-c, c]
        (improved-DDPM's clip_denoised, for tokens with a known range such as pixels).
    Returns:
      dict of [N, C] float32: mean, variance, log_variance, pred_xstart.
    """
    c = x_t.shape[-1]
    assert model_out.shape[-1] == 2 * c, (model_out.shape, x_t.shape)
    eps, var_values = model_out[:, :c], model_out[:, c:]
    min_log = self._coef(self.posterior_log_variance_clipped, t)
    max_log = self._coef(self.log_betas, t)
    # v in [-1, 1] interpolates between the posterior variance and beta_t (learned range).
    frac = (var_values + 1) / 2
    log_variance = frac * max_log + (1 - frac) * min_log
    pred_xstart = self.predict_xstart(eps, x_t, t)
    if clip_denoised is not None:
      pred_xstart = jnp.clip(pred_xstart, -clip_denoised, clip_denoised)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
    return dict(mean=mean, variance=jnp.exp(log_variance), log_variance=log_variance,
                pred_xstart=pred_xstart)

  def predict_xstart(self, out: Array, x_t: Array, t: Array) -> Array:
    """The clean-token estimate [N, C] from the head's first C channels `out` [N, C]."""
    if self.prediction == "x0":
      return out
    if self.prediction == "v":    # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho)
      return (self._coef(self.sqrt_alphas_cumprod, t) * x_t
              - self._coef(self.sqrt_one_minus_alphas_cumprod, t) * out)
    return (self._coef(self.sqrt_recip_alphas_cumprod, t) * x_t
            - self._coef(self.sqrt_recipm1_alphas_cumprod, t) * out)

  def p_sample(self, model_out: Array, x_t: Array, t: Array, noise: Array,
               temperature: Union[float, Array] = 1.0,
               clip_denoised: Optional[float] = None) -> dict:
    """One ancestral step x_t -> x_{t-1} (MAR's p_sample).

    sample = mean + [t != 0] * exp(0.5 log_var) * noise * temperature: the temperature scales
    the noise (not the variance), and the last step (t == 0) adds no noise.

    Args:
      model_out: [N, 2C] head output; x_t, noise: [N, C] float32; t: [N] int chain indices.
    Returns:
      dict with 'sample' and 'pred_xstart', [N, C] float32.
    """
    out = self.p_mean_variance(model_out, x_t, t, clip_denoised)
    nonzero = (t != 0).astype(x_t.dtype)[:, None]
    sample = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise * temperature
    return dict(sample=sample, pred_xstart=out["pred_xstart"])

  def p_sample_loop(self, net_fn: Callable[[Array, Array], Array], shape: Sequence[int],
                    rng: Array, temperature: Union[float, Array] = 1.0,
                    noise: Array | None = None,
                    clip_denoised: Optional[float] = None) -> Array:
    """Ancestral sampling over the whole chain, as a `lax.fori_loop` (static shapes, jittable).

    Args:
      net_fn: (x_t [N, C] f32, t_original [N] int32) -> [N, 2C] head output. It receives the
        ORIGINAL timesteps (timestep_map), as the reference's wrapped model.
      shape: (N, C).
      rng: PRNG key. Split into the initial noise key (unless `noise` is given) and a key that
        is folded with the chain index for each step's noise.
      temperature: scales the per-step noise (scalar; may be traced).
      noise: optional initial x_T [N, C] (MAR shares it between CFG halves).
    Returns:
      x_0 samples [N, C] float32.
    """
    init_key, step_key = jax.random.split(rng)
    x = jax.random.normal(init_key, tuple(shape), jnp.float32) if noise is None else noise
    n = shape[0]
    t_count = self.num_timesteps
    # The noise of chain index i is normal(fold_in(step_key, i)). All of it is drawn before
    # the loop, in one batched draw (vmap over i: the same bits): on XLA:CPU each threefry
    # draw is its own small while loop, and two of them per chain step were ~3x the op
    # launches of the head itself. [T, N, C] float32, a few MB at sampling sizes.
    chain_noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(step_key, i),
                                                       x.shape, x.dtype))(
        jnp.arange(t_count, dtype=jnp.int32))

    def body(k, x):
      i = t_count - 1 - k  # chain index, from T-1 down to 0
      t = jnp.full((n,), i, jnp.int32)
      model_out = net_fn(x, self.model_timesteps(t))
      step_noise = chain_noise[i]
      return self.p_sample(model_out, x, t, step_noise, temperature, clip_denoised)["sample"]

    return jax.lax.fori_loop(0, t_count, body, x)

  # ---- training ----------------------------------------------------------------------------

  def vb_terms_bpd(self, model_out: Array, x_start: Array, x_t: Array, t: Array) -> Array:
    """Variational-bound term per row, in bits: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for
    t > 0 and the discretised-Gaussian decoder NLL for t == 0, each averaged over channels.

    model_out: [N, 2C]; x_start, x_t: [N, C]; t: [N]. Returns [N] float32.
    """
    true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance(model_out, x_t, t)
    kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])
    kl = jnp.mean(kl, axis=-1) / np.float32(np.log(2.0))
    decoder_nll = -discretized_gaussian_log_likelihood(
        x_start, out["mean"], 0.5 * out["log_variance"])
    decoder_nll = jnp.mean(decoder_nll, axis=-1) / np.float32(np.log(2.0))
    return jnp.where(t == 0, decoder_nll, kl)

  def training_losses(self, model_out: Array, x_start: Array, x_t: Array, t: Array,
                      noise: Array) -> dict:
    """MAR/improved-DDPM loss terms (eps prediction, learned-range variance, by default).

    Args:
      model_out: [N, 2C] head output at (x_t, timestep_map[t]).
      x_start: [N, C] clean tokens; x_t = q_sample(x_start, t, noise); noise [N, C]; t [N].
    Returns:
      dict of [N] float32: 'mse' (MSE in `loss_space`, eps by default; mean over C), 'vb'
      (bits; the mean half of the output enters with its gradient stopped, so the vb term
      trains only the variance values -- improved DDPM's frozen_out) and 'loss' = mse + vb.
    """
    c = x_start.shape[-1]
    head = model_out[:, :c]
    frozen_out = jnp.concatenate([jax.lax.stop_gradient(head), model_out[:, c:]], axis=-1)
    vb = self.vb_terms_bpd(frozen_out, x_start, x_t, t)
    if self.prediction == "eps" and self.loss_space == "eps":
      mse = jnp.mean(jnp.square(noise - head), axis=-1)      # the reference, bit for bit
    else:
      # Errors in x0 and eps are tied by the shared x_t: d_eps = -sqrt(SNR) d_x0, so
      # v error = d_x0 / sqrt(1 - abar) and |d_v|^2 = |d_eps|^2 + |d_x0|^2.
      x0_err = self.predict_xstart(head, x_t, t) - x_start
      sq = jnp.mean(jnp.square(x0_err), axis=-1)
      snr = self._coef(self.alphas_cumprod / (1.0 - self.alphas_cumprod), t)[:, 0]
      mse = {"x0": sq, "eps": snr * sq, "v": (1.0 + snr) * sq}[self.loss_space]
    return dict(mse=mse, vb=vb, loss=mse + vb)
