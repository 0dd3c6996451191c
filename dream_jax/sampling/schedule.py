"""MAR's cosine reveal schedule, the CFG schedule and the SAD selection step (host numpy).

Everything here is a static function of (L tokens, N decoding steps) computed once on the
host in float64 numpy, exactly as the reference (LTH14/mar `MAR.sample_tokens`):

  before step 0 all L tokens are masked; at step s (0-based)
    mask_len = floor(L * cos(pi/2 * (s+1) / N))                    # still masked after s
    mask_len = max(1, min(mask_len, #masked_before_s - 1))         # reveal >= 1, keep >= 1
    the LAST step (s = N-1) reveals everything that is left (mask_len is ignored for the mask,
    but -- as in the reference -- it still enters the linear CFG scale of that step).
  Tokens follow one random order per image: after step s the first `masked_after[s]` entries
  of the order stay masked, so step s reveals the order's ranks
  [masked_after[s], masked_before[s]) -- a contiguous range of the order, which is what
  lets the sampler gather the newly revealed positions with a dynamic slice.

  When N > L - 1 the clamps make some middle steps reveal nothing (min(..) hits 0 and
  max(1, ..) keeps one token masked); the schedule reproduces that too.

CFG (Muse / MAR): 'linear' uses cfg_s = 1 + (cfg - 1) * (L - mask_len_s) / L with the CLAMPED
mask_len of step s (so the last step uses (L - 1) / L, not 1); 'constant' uses cfg.

SAD step T counts decoding steps done before selection (1 <= T <= N). `sad_step_from_share`
returns the first T whose revealed share (L - masked_after[T-1]) / L >= the share.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class RevealSchedule:
  """The static per-step token counts of MAR decoding.

  Attributes (all int64 numpy [N] unless noted):
    seq_len: L; num_steps: N.
    mask_len: the reference's clamped `mask_len` of each step (enters the linear CFG scale).
    masked_before: tokens still masked when step s starts (masked_before[0] = L).
    masked_after: tokens still masked after step s (0 after the last step).
    revealed: tokens step s samples = masked_before - masked_after.
    visible: tokens the encoder sees at step s = L - masked_before.
  """
  seq_len: int
  num_steps: int
  mask_len: np.ndarray
  masked_before: np.ndarray
  masked_after: np.ndarray

  @property
  def revealed(self) -> np.ndarray:
    return self.masked_before - self.masked_after

  @property
  def visible(self) -> np.ndarray:
    return self.seq_len - self.masked_before

  @property
  def max_revealed(self) -> int:
    return int(self.revealed.max())

  def revealed_share(self, steps_done: int) -> float:
    """Share of tokens decoded after `steps_done` steps (0 -> 0.0, N -> 1.0)."""
    if steps_done <= 0:
      return 0.0
    return float(self.seq_len - self.masked_after[steps_done - 1]) / self.seq_len


def reveal_schedule(seq_len: int, num_steps: int) -> RevealSchedule:
  """MAR's cosine schedule with its clamps (see the module docstring)."""
  if seq_len < 1 or num_steps < 1:
    raise ValueError(f"need seq_len >= 1 and num_steps >= 1, got {seq_len}, {num_steps}")
  remaining = seq_len
  mask_len, before, after = [], [], []
  for step in range(num_steps):
    ratio = np.cos(math.pi / 2.0 * (step + 1) / num_steps)
    m = int(np.floor(seq_len * ratio))
    m = max(1, min(remaining - 1, m))
    mask_len.append(m)
    before.append(remaining)
    remaining = 0 if step == num_steps - 1 else m
    after.append(remaining)
  arr = lambda v: np.asarray(v, np.int64)
  return RevealSchedule(seq_len, num_steps, arr(mask_len), arr(before), arr(after))


def cfg_scales(schedule: RevealSchedule, cfg, kind: str):
  """Guidance scale of every step [N]: 'linear' (MAR/Muse: grows with the revealed share)
  or 'constant'. A Python `cfg` gives float64 numpy; a jax scalar (traced inside the
  decoding program) gives float32 jax values."""
  host = isinstance(cfg, (int, float, np.floating))
  xp, dtype = (np, np.float64) if host else (jnp, jnp.float32)
  if kind == "linear":
    frac = xp.asarray((schedule.seq_len - schedule.mask_len) / schedule.seq_len, dtype)
    return 1.0 + (cfg - 1.0) * frac
  if kind == "constant":
    return xp.full((schedule.num_steps,), 1.0, dtype) * cfg
  raise ValueError(f"sampling.cfg_schedule must be 'linear' or 'constant', got {kind!r}")


def sad_step_from_share(schedule: RevealSchedule, share: float) -> int:
  """First T (steps done) whose revealed share >= `share`, share in (0, 1]."""
  if not 0.0 < share <= 1.0:
    raise ValueError(f"sad_share must be in (0, 1], got {share}")
  for t in range(1, schedule.num_steps + 1):
    # Compare in integers: revealed tokens >= share * L (up to float rounding of share*L).
    if schedule.seq_len - schedule.masked_after[t - 1] >= share * schedule.seq_len - 1e-9:
      return t
  return schedule.num_steps


def check_sad_step(schedule: RevealSchedule, sad_step: int) -> int:
  """Validates T (1 <= T <= N) with an error that says what the schedule allows."""
  t = int(sad_step)
  if not 1 <= t <= schedule.num_steps:
    raise ValueError(
        f"SAD step T={sad_step} is outside the decoding schedule: it must be in "
        f"[1, {schedule.num_steps}] (the number of decoding steps done before selection; "
        f"T=0 would score candidates with nothing decoded)")
  return t


def rounded_up(counts: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
  """Each count rounded up to the smallest size >= it (what `bucketed` runs)."""
  s = np.asarray(sizes)
  return s[np.minimum(np.searchsorted(s, counts, side="left"), len(s) - 1)]
