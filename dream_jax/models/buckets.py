"""Static buckets for data-dependent sizes, and the row permutation that feeds them.

Two counts in a DREAM step depend on the data: the visible tokens the encoder runs (token
dropping) and the counting rows of the diffusion head. Shapes must be static, so each count
is rounded up to one of a few static sizes (`bucket_sizes`) and `lax.switch` runs only the
branch of that size (`bucketed`). Rows that take part are first moved to the front, in
increasing index order (a stable partition), so that a branch of size k takes the first k.

Everything that does not depend on the size stays OUTSIDE the branches: the partition, the
gather of the rows into that order and the gather back (by the inverse permutation).
Inside `lax.switch` every branch is a separate program that XLA compiles (and, in the
backward pass, differentiates) on its own, so whatever a branch holds is paid once per
bucket; a branch here holds only the layers that run on its k rows.

The partition is computed without a sort (`partition`): each row's slot is a prefix count, and
the gather's gradient is the gather by the inverse permutation (`permute_rows`), not a
scatter-add. Both are exact: same order as a stable argsort, same values and gradients.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array


def bucket_sizes(n: int, buckets: int) -> tuple[int, ...]:
  """Static lengths a dynamic count in [0, n] is rounded up to: ceil(n*k/buckets), k=1..buckets
  (with buckets > n this is 1..n)."""
  return tuple(sorted({max(1, math.ceil(n * k / buckets)) for k in range(1, buckets + 1)}))


def bucketed(count, sizes, branch_fn, *operands):
  """Runs `branch_fn(size, *operands)` for the smallest static size >= count.

  All branches are compiled into one program and `lax.switch` executes only the chosen one,
  so the work scales with the bucket, not with the worst case. `count` must be a traced or
  concrete int scalar that is <= sizes[-1].
  """
  if len(sizes) == 1:
    return branch_fn(sizes[0], *operands)
  idx = jnp.searchsorted(jnp.asarray(sizes), count, side="left")
  idx = jnp.minimum(idx, len(sizes) - 1)
  return jax.lax.switch(idx, [functools.partial(branch_fn, k) for k in sizes], *operands)


def partition(first: Array) -> tuple[Array, Array]:
  """Stable partition of each row of `first` [B, N] bool: True entries first.

  Returns (perm, inv), both [B, N] int32 permutations of 0..N-1: perm[b, j] = the index that
  goes to slot j (what `argsort(~first, stable=True)` gives), inv[b, i] = the slot of index
  i (perm[b, inv[b, i]] == i). inv is two prefix counts (the n-th True index goes to slot n,
  the n-th False one to slot count(True) + n); perm is its inverse, an int scatter of a
  permutation. No sort: on TPU a sort is a separate, slowly compiled program per call site.
  """
  b, n = first.shape
  first_i = first.astype(jnp.int32)
  n_first = first_i.sum(axis=1, keepdims=True)
  inv = jnp.where(first, jnp.cumsum(first_i, axis=1) - 1,
                  n_first + jnp.cumsum(1 - first_i, axis=1) - 1).astype(jnp.int32)
  perm = jnp.zeros((b, n), jnp.int32).at[jnp.arange(b)[:, None], inv].set(
      jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)), unique_indices=True)
  return perm, inv


@jax.custom_vjp
def permute_rows(x: Array, perm: Array, inv: Array) -> Array:
  """x [B, N, ...] -> y with y[b, j] = x[b, perm[b, j]]; inv is perm's inverse (`partition`).

  The gradient is g gathered by inv (the transpose of a permutation is its inverse): exactly
  the scatter-add that autodiff would emit for the gather, without the scatter.
  """
  return _take_rows(x, perm)


def _take_rows(x, idx):
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _permute_fwd(x, perm, inv):
  return _take_rows(x, perm), (perm, inv)


def _permute_bwd(res, g):
  perm, inv = res
  return _take_rows(g, inv), None, None


permute_rows.defvjp(_permute_fwd, _permute_bwd)
