"""Fréchet distance between Gaussians fitted to feature sets, the Inception Score, and the
PROXY features used when no Inception weights are present.

  FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))
tr((S1 S2)^(1/2)) is computed without a general matrix square root: with A = S1^(1/2) (from
the symmetric eigendecomposition of S1, negative round-off eigenvalues clipped to 0),
S1 S2 is similar to the symmetric PSD matrix A S2 A, so the trace is the sum of the square
roots of A S2 A's eigenvalues (eigvalsh, clipped at 0). This is stable for the singular
covariances of small sample sets, where scipy.linalg.sqrtm returns complex round-off and
needs an offset; tests check it against scipy on fixed well-conditioned statistics.
"""
from __future__ import annotations

import numpy as np


def statistics(features: np.ndarray) -> dict:
  """[N, D] -> {'mu' [D], 'sigma' [D, D]} in float64 (unbiased covariance, as np.cov)."""
  f = np.asarray(features, np.float64)
  return dict(mu=f.mean(0), sigma=np.cov(f, rowvar=False))


def psd_sqrt(s: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigh (eigenvalues clipped at 0)."""
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
  """tr((s1 s2)^(1/2)) for symmetric PSD s1, s2."""
  a = psd_sqrt(s1)
  m = a @ s2 @ a
  return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
  """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` chunks, as torch-fidelity
  computes it (rows shuffled with RandomState(seed), float64 softmax of the logits)."""
  logits = np.asarray(logits, np.float64)
  n = len(logits)
  logits = logits[np.random.RandomState(seed).permutation(n)]
  logp = logits - logits.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  p = np.exp(logp)
  scores = []
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    q = p[lo:hi].mean(0, keepdims=True)
    scores.append(np.exp((p[lo:hi] * (logp[lo:hi] - np.log(q))).sum(1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


PIXEL_FEATURES_VERSION = 2   # bump when pixel_features changes (names cached statistics)


def pixel_features(images: np.ndarray) -> np.ndarray:
  """PROXY features of uint8 images [N, H, W, 3] -> [N, 120] float32 (no network, nothing to
  download). Three groups, each a property generated images can get wrong:
    layout   4x4 area-averaged RGB in [0, 1] (48): where colour is;
    palette  sqrt of the joint RGB histogram, 4 levels per channel (64): which colours and
             how much of each (joint, so a channel swap that leaves the per-channel
             histograms unchanged still shows);
    edges    sqrt of an 8-bin histogram of the gradient magnitude (8): sharp edges vs blur
             or noise.
  (sqrt: a Hellinger embedding of the histograms, so rare bins count.) A Fréchet distance on
  them is 0 for identical sets and grows with differences in those statistics (tests: blur,
  noise, blank images); it is NOT comparable to FID and is reported as 'proxy_fd_pixels'."""
  x = np.asarray(images, np.float32) / 255.0
  n, h, w, _ = x.shape
  if h % 4 or w % 4:
    raise ValueError(f"pixel_features needs H, W divisible by 4, got {h}x{w}")
  layout = x.reshape(n, 4, h // 4, 4, w // 4, 3).mean((2, 4)).reshape(n, -1)
  q = np.minimum((x * 4).astype(np.int64), 3)
  code = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(n, -1)
  palette = np.stack([np.bincount(c, minlength=64) for c in code]) / (h * w)
  gray = x.mean(-1)
  gx, gy = np.diff(gray, axis=2)[:, :-1], np.diff(gray, axis=1)[:, :, :-1]
  mag = np.sqrt(gx ** 2 + gy ** 2)
  ebins = np.array([0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 2.0])
  edges = np.stack([np.histogram(m, ebins)[0] for m in mag]) / mag[0].size
  return np.concatenate([layout, np.sqrt(palette), np.sqrt(edges)], 1).astype(np.float32)
