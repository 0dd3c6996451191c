"""models/buckets.py: the sort-free stable partition and the permutation with its own gradient
agree with argsort / a plain gather (checked against numpy and jax.grad of take_along_axis)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.models.buckets import bucket_sizes, partition, permute_rows


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1.0])
def test_partition_is_stable_argsort(p):
  first = np.random.default_rng(int(p * 10)).random((6, 41)) < p
  perm, inv = partition(jnp.asarray(first))
  want = np.argsort(~first, axis=1, kind="stable")
  np.testing.assert_array_equal(np.asarray(perm), want)
  for b in range(6):   # inv is perm's inverse: slot of each index
    np.testing.assert_array_equal(np.asarray(inv)[b][want[b]], np.arange(41))


def test_permute_rows_value_and_gradient_equal_gather():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 17, 5)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(3, 17, 5)), jnp.float32)
  perm, inv = partition(jnp.asarray(rng.random((3, 17)) < 0.5))
  plain = lambda x: jnp.take_along_axis(x, perm[..., None], axis=1)
  ours = lambda x: permute_rows(x, perm, inv)
  np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(plain(x)))
  g_ours = jax.grad(lambda x: (ours(x) * cot).sum())(x)
  g_plain = jax.grad(lambda x: (plain(x) * cot).sum())(x)
  np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g_plain))
  # Under jit, and with a truncated use of the output (the bucket slices the first k rows).
  g_k = jax.jit(jax.grad(lambda x: (ours(x)[:, :7] * cot[:, :7]).sum()))(x)
  g_kp = jax.grad(lambda x: (plain(x)[:, :7] * cot[:, :7]).sum())(x)
  np.testing.assert_array_equal(np.asarray(g_k), np.asarray(g_kp))


def test_bucket_sizes():
  assert bucket_sizes(256, 4) == (64, 128, 192, 256)
  assert bucket_sizes(3, 8) == (1, 2, 3)
