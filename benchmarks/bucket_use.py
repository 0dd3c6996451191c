"""Which training bucket a run's steps land in, from its masking schedule and global batch.

  python benchmarks/bucket_use.py [--config=configs/dream_b16.py] [--buckets=4] [--points=49]

The trainer picks the encoder's bucket from the largest visible count in the GLOBAL batch
(models/api.py) and the diffusion head's from the largest count of loss rows
(models/diffloss.py), so with one mask ratio per group of `masking.group_size` samples the
bucket follows the least-masked group (encoder) and the most-masked group that passes the
diffusion gate (head). This script draws the groups' ratios with the library's own sampler
(`masking.sample_ratios`) at `--points` evenly spaced steps of the config's Masking Warmup
schedule (`--draws` batches each) and prints, per point and averaged over the run, the size
of the bucket taken as a share of the top bucket for `--buckets` buckets. A share near 1
means smaller buckets would almost never run: each extra bucket is one more compiled
branch (docs/scaling.md) for the FLOPs it saves, which the share bounds (the saving is at
most 1 - share of the bucketed layers' token count).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def bucket_shares(config, buckets: int, points: int, draws: int, seed: int = 0):
  """[(progress, center, encoder share, head share)] and the run means (encoder, head).

  The share is the bucket size taken over the top bucket's, averaged over `draws` batches.
  """
  from dream_jax import masking
  from dream_jax.models.buckets import bucket_sizes
  from dream_jax.models.patchify import token_layout
  from dream_jax.train.schedule import mask_center_schedule
  seq = token_layout(config.tokenizer, config.data.image_size)["seq_len"]
  groups = config.batch_size // config.masking.group_size
  sizes = np.array(bucket_sizes(seq, buckets))
  center_of = mask_center_schedule(config)
  gate = float(config.loss.diff_min_mask_ratio)
  # [draws] keys -> [draws, groups] ratios, one batch per key
  draw = jax.jit(jax.vmap(lambda k, c: masking.sample_ratios(k, groups, c, config.masking),
                          in_axes=(0, None)))
  take = lambda n: sizes[np.searchsorted(sizes, n)]                   # smallest size >= n
  rows = []
  key = jax.random.key(seed)
  for i, step in enumerate(np.linspace(0, config.total_steps - 1, points).astype(int)):
    center = float(center_of(int(step)))
    r = np.asarray(draw(jax.random.split(jax.random.fold_in(key, i), draws), center))
    masked = np.asarray(masking.num_masked(r, seq))                    # ceil(L * r)
    top_vis = (seq - masked).max(1)                                   # least-masked group
    top_loss = np.where(r >= gate, masked, 0).max(1)                  # gated, most-masked
    rows.append((step / max(1, config.total_steps - 1), center,
                 take(top_vis).mean() / seq, take(top_loss).mean() / seq))
  arr = np.array(rows)
  return rows, (arr[:, 2].mean(), arr[:, 3].mean())


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/dream_b16.py")
  p.add_argument("--buckets", type=int, default=4, help="bucket count to evaluate")
  p.add_argument("--points", type=int, default=49, help="steps of the schedule sampled")
  p.add_argument("--draws", type=int, default=200, help="batches drawn per step")
  a = p.parse_args()
  from configs.common import load_config_file
  config = load_config_file(a.config)
  rows, (enc, head) = bucket_shares(config, a.buckets, a.points, a.draws)
  g = config.batch_size // config.masking.group_size
  print(f"{a.config}: batch {config.batch_size}, {g} mask-ratio groups of "
        f"{config.masking.group_size}, {a.buckets} buckets, {a.draws} batches per point")
  print("progress  centre  encoder bucket / top  head bucket / top")
  for prog, c, e, h in rows[:: max(1, len(rows) // 12)]:
    print(f"{prog:8.3f}  {c:6.3f}  {e:20.3f}  {h:17.3f}")
  print(f"mean over the run: encoder {enc:.4f}, head {head:.4f} of the top bucket")


if __name__ == "__main__":
  main()
