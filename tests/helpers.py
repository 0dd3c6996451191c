"""Shared test configs and paths (imported by test files; no test file imports another).

  train_config(**overrides)  runlocal of dream_b16 (batch 8) with 16 px pixel tokens (4x4
                             patches: 16 tokens of dim 48) and the 'small' trainable text
                             condition, so no tiny VAE / T5 is compiled; dotted overrides
                             ('model.width=...') are applied, then validated
  model_config(**model)      runlocal at 16 px with 2x2 patches (64 tokens of dim 12), one
                             bucket, no dropout: the model-core invariants' network
  sampling_config()          runlocal at 32 px with 4x4 patches (64 tokens of dim 48), 2
                             buckets, 4 decoding steps of a 3-step head chain, SAD K=3 T=2
  FIXTURES                   tests/fixtures/official_tiny (recorded official outputs)
"""
import os

from configs import common

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "official_tiny")


def train_config(**overrides):
  from configs import dream_b16
  c = dream_b16.get_config("runlocal")
  c.tokenizer.update(kind="identity", patch_size=4)
  c.data.image_size = 16
  c.text.cond_encoder = "small"
  c.text.update(small_width=32, small_layers=1, small_heads=2)
  c.ckpt.update(every=2, keep=2)
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  common.validate(c)
  return c


def model_config(**model):
  c = common.base_config()
  common.runlocal(c)
  c.tokenizer.kind = "identity"
  c.data.image_size = 16               # 8x8 grid of 2x2 pixel patches: L = 64, C = 12
  c.text.cond_encoder = "small"
  c.text.small_width, c.text.small_layers, c.text.small_heads = 16, 1, 2
  c.model.update(encoder_buckets=1, diffusion_buckets=1, attn_dropout=0.0, proj_dropout=0.0)
  c.sampling.update(encoder_buckets=1, head_buckets=1)
  c.model.update(**model)
  return common.finalize(c)


def sampling_config():
  from configs import dream_b16
  c = dream_b16.get_config("runlocal")
  c.tokenizer.kind = "identity"
  c.tokenizer.patch_size = 4                      # 32px -> 8x8 = 64 tokens of dim 48
  c.text.cond_encoder = "small"
  c.sampling.update(num_steps=4, num_diffusion_steps="3", cfg=3.0, sad_candidates=3,
                    sad_step=2)
  return c
