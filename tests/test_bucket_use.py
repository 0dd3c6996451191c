"""benchmarks/bucket_use.py: the training bucket a schedule's steps land in (the paper
configs' one-bucket setting rests on it, configs/common.py:paper_config)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bucket_use  # noqa: E402


def _config(**masking):
  from configs import dream_b16
  c = dream_b16.get_config("runlocal")
  c.data.image_size = 64                  # 8x8 latents in 2x2 patches: L = 16 tokens
  c.masking.update(**masking)
  return c


@pytest.mark.parametrize("ratio,enc,head", [
    # L = 16, buckets (4, 8, 12, 16): ratio 0.5 masks 8 -> 8 visible (bucket 8), 8 loss rows
    # (bucket 8); ratio 0.3 masks ceil(4.8) = 5 -> 11 visible (bucket 12), and no loss rows
    # (0.3 is under the diffusion gate 0.5) -> the smallest bucket, 4.
    (0.5, 8 / 16, 8 / 16), (0.3, 12 / 16, 4 / 16)])
def test_fixed_ratio_lands_in_its_own_bucket(ratio, enc, head):
  c = _config(kind="fixed", fixed_ratio=ratio)
  from dream_jax.models.patchify import token_layout
  assert token_layout(c.tokenizer, c.data.image_size)["seq_len"] == 16
  rows, means = bucket_use.bucket_shares(c, buckets=4, points=3, draws=2)
  assert [r[2] for r in rows] == [enc] * 3 and [r[3] for r in rows] == [head] * 3
  assert means == pytest.approx((enc, head))


def test_more_groups_push_the_batch_to_the_top_bucket():
  """One ratio per batch leaves smaller buckets in use; the max over 32 groups of the same
  distribution lands (nearly) at the top: the share grows with the group count."""
  one = _config()                         # runlocal: batch 8, group_size 4 -> 2 groups
  one.masking.group_size = one.batch_size
  many = _config()
  many.batch_size, many.masking.group_size = 32 * 4, 4
  _, (enc1, head1) = bucket_use.bucket_shares(one, buckets=4, points=7, draws=40)
  _, (enc32, head32) = bucket_use.bucket_shares(many, buckets=4, points=7, draws=40)
  assert enc1 < 0.9 and head1 < 0.9
  assert enc32 > 0.95 and head32 > 0.95
