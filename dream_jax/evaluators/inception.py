"""The FID Inception-v3 in Flax: the network of TF's 2015-12-05 graph that FID, IS and
torch-fidelity use (torch-fidelity's FeatureExtractorInceptionV3 / pytorch-fid's FID
blocks), written for NHWC and checked against torch-fidelity 0.4.0 (tests/test_inception.py).

What makes it the FID network and not torchvision's Inception-v3:
  * input uint8 [N, H, W, 3] resized to 299x299 with TensorFlow 1.x bilinear resampling
    (align_corners=False, no half-pixel offset: src = dst * in/out), then (x - 128) / 128;
  * BatchNorm eps 1e-3, convolutions without bias;
  * the average pools inside Mixed_5*, 6b-e and 7b exclude the zero padding
    (count_include_pad=False), and Mixed_7c (InceptionE_2) uses a 3x3 MAX pool in its pool
    branch (a quirk of the TF graph);
  * 1008 logits (fc on the 2048-d pool features).
Outputs: `pool` [N, 2048] (FID features), `logits_unbiased` [N, 1008] (pool @ W: what
torch-fidelity's IS uses), `logits` [N, 1008] (with the bias).

Weights: `python -m dream_jax.evaluators.inception --torch_weights=F.pth --out=W.npz`
converts the published PyTorch FID weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth
or torch-fidelity's weights-inception-2015-12-05-6726825d.pth; the same state-dict names)
into a flat .npz that `load_variables` reads. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299


def resize_indices(in_size: int, out_size: int):
  """TF1 bilinear (align_corners=False) source rows: (lo, hi, frac) as torch-fidelity
  computes them (float32 arange * float32 scale)."""
  grid = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
  lo = grid.astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, (grid - lo.astype(np.float32)).astype(np.float32)


def resize_bilinear_tf1(x: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """[N, H, W, C] float32 -> [N, size, size, C], TF 1.x resize_bilinear (see module doc)."""
  ylo, yhi, dy = resize_indices(x.shape[1], size)
  xlo, xhi, dx = resize_indices(x.shape[2], size)
  rows_lo, rows_hi = x[:, ylo], x[:, yhi]
  in00, in01 = rows_lo[:, :, xlo], rows_lo[:, :, xhi]
  in10, in11 = rows_hi[:, :, xlo], rows_hi[:, :, xhi]
  dx = jnp.asarray(dx)[None, None, :, None]
  dy = jnp.asarray(dy)[None, :, None, None]
  in0 = in00 + (in01 - in00) * dx
  in1 = in10 + (in11 - in10) * dx
  return in0 + (in1 - in0) * dy


def _pad(p):
  p = (p, p) if isinstance(p, int) else p
  return ((p[0], p[0]), (p[1], p[1]))


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm(eps 1e-3, running statistics) -> ReLU."""
  features: int
  kernel: Sequence[int] | int
  stride: int = 1
  padding: Sequence[int] | int = 0

  @nn.compact
  def __call__(self, x):
    k = (self.kernel, self.kernel) if isinstance(self.kernel, int) else tuple(self.kernel)
    x = nn.Conv(self.features, k, (self.stride, self.stride), padding=_pad(self.padding),
                use_bias=False, name="conv", precision=jax.lax.Precision.HIGHEST)(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg3(x):
  """3x3 stride-1 average pool, padding 1, padding excluded from the mean (TF)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, 1, name="branch1x1")(x)
    b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    bp = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    return jnp.concatenate([b3, bd, bp], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name="branch1x1")(x)
    b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, 1, name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
    bp = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    return jnp.concatenate([b3, b7, bp], -1)


class InceptionE(nn.Module):
  """InceptionE_1 (average pool, padding excluded) or InceptionE_2 (max pool) of the FID net."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, 1, name="branch1x1")(x)
    b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)],
                         -1)
    bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                         -1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg3(x)
    bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
  """uint8 images [N, H, W, 3] -> dict(pool [N, 2048], logits_unbiased, logits [N, 1008])."""

  @nn.compact
  def __call__(self, images):
    x = resize_bilinear_tf1(images.astype(jnp.float32))
    x = (x - 128.0) / 128.0
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(False, name="Mixed_7b")(x)
    x = InceptionE(True, name="Mixed_7c")(x)
    pool = x.mean(axis=(1, 2))
    fc = self.param("fc", lambda k: dict(
        kernel=nn.initializers.lecun_normal()(k, (2048, 1008)), bias=jnp.zeros((1008,))))
    unbiased = jnp.dot(pool, fc["kernel"], precision=jax.lax.Precision.HIGHEST)
    return dict(pool=pool, logits_unbiased=unbiased, logits=unbiased + fc["bias"])


# ------------------------------------------------------------------------- weights
def variables_from_torch(state_dict) -> dict:
  """A torch FID-Inception state dict (name -> tensor/array) -> flax variables
  {'params', 'batch_stats'}: conv [O, I, kh, kw] -> kernel [kh, kw, I, O]; bn weight/bias ->
  scale/bias, running_mean/var -> batch_stats mean/var; fc.weight [1008, 2048] -> kernel."""
  params, stats = {}, {}

  def put(tree, path, value):
    for p in path[:-1]:
      tree = tree.setdefault(p, {})
    tree[path[-1]] = np.asarray(value, np.float32)

  for name, value in state_dict.items():
    v = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    parts = name.split(".")
    if parts[0] == "fc":
      put(params, ["fc", "kernel" if parts[1] == "weight" else "bias"],
          v.T if parts[1] == "weight" else v)
    elif parts[-2] == "conv":
      put(params, parts[:-2] + ["conv", "kernel"], v.transpose(2, 3, 1, 0))
    elif parts[-2] == "bn":
      leaf = parts[-1]
      if leaf == "num_batches_tracked":
        continue
      if leaf in ("weight", "bias"):
        put(params, parts[:-1] + ["scale" if leaf == "weight" else "bias"], v)
      else:
        put(stats, parts[:-1] + ["mean" if leaf == "running_mean" else "var"], v)
    else:
      raise KeyError(f"unexpected FID-Inception weight {name!r}")
  return dict(params=params, batch_stats=stats)


def save_variables(variables: dict, path: str) -> None:
  flat = {"/".join(str(getattr(k, "key", k)) for k in kp): np.asarray(v)
          for kp, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
  np.savez(path, **flat)


def load_variables(path: str) -> dict:
  """The .npz written by `save_variables` -> flax variables (shapes checked on first use)."""
  out: dict = {}
  with np.load(path) as f:
    for key in f.files:
      node = out
      *parents, leaf = key.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = f[key]
  return out


def random_variables(seed: int = 0) -> dict:
  """Randomly initialised FID-Inception variables (a fixed, model-independent network)."""
  v = FIDInceptionV3().init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  return jax.tree.map(np.asarray, dict(v))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="PyTorch FID Inception weights -> flax .npz")
  p.add_argument("--torch_weights", required=True, help="pt_inception-2015-12-05-*.pth")
  p.add_argument("--out", required=True, help="output .npz")
  args = p.parse_args(argv)
  import torch
  sd = torch.load(args.torch_weights, map_location="cpu", weights_only=True)
  variables = variables_from_torch(sd)
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3), jnp.uint8))
  want = jax.tree.map(lambda s: s.shape, dict(shapes))
  got = jax.tree.map(lambda a: a.shape, variables)
  if want != got:
    raise ValueError("converted weights do not match the FID Inception's variables")
  save_variables(variables, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
