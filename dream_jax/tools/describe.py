"""Parameter counts per component, from `jax.eval_shape` (no memory is allocated).

  python -m dream_jax.tools.describe --config=configs/dream_g16.py

Prints one line per component, the frozen tokenizer / text encoder on their own labelled
lines (they do not train), and `total trainable: N`. The official counts (docs/PERF_ANCHOR.md)
include a 1000-class embedding that text-to-image never uses; `--official` adds it so the
two can be compared line for line.
"""
from __future__ import annotations

import collections

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags



def _define_flags():
  """Only when run as a program: importing `count_params` defines no global flags."""
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_bool("official", False, "Also count the official model's unused parts "
                    "(1000-class embedding, fake_latent) for comparison with its count.")


GROUPS = (
    ("encoder", ("z_proj", "z_proj_ln", "buffer_embed", "encoder_pos_embed", "encoder_blocks",
                 "encoder_norm")),
    ("image projection", ("image_projection",)),
    ("CLIP text tower", ("text_tower", "logit_scale")),
    ("condition encoder (trainable)", ("cond_encoder",)),
    ("text aligner", ("text_proj", "text_pos_embed", "text_proj_ln", "text_aligner")),
    ("decoder", ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_proj_ln",
                 "decoder_blocks", "decoder_norm", "diffusion_pos_embed")),
    ("diffusion head", ("diffloss",)),
)


def count_params(config) -> dict:
  """{component: count} for the trainable DREAM parameters (+ 'total')."""
  from dream_jax.train.components import build_model
  model = build_model(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0))["params"]
  counts = collections.OrderedDict((g, 0) for g, _ in GROUPS)
  for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
    top = path[0].key
    prefix = top.rsplit("_", 1)[0] if top.rsplit("_", 1)[-1].isdigit() else top
    for group, names in GROUPS:
      if prefix in names or top in names:
        counts[group] += int(np.prod(leaf.shape))
        break
    else:
      raise ValueError(f"parameter {top} belongs to no component")
  counts["total"] = sum(counts.values())
  return counts


def official_extras(config) -> int:
  """Parameters the official class has and text-to-image never uses."""
  d = config.model.width
  # class_emb has 1000 rows (we keep row 0 as the buffer embedding) + fake_latent [1, D].
  return 999 * d + d


def encoder_flops(config, mask_ratio: float) -> dict:
  """Forward FLOPs per image of the encoder blocks for both paths (2 FLOPs per MAC).

  'masked' runs buffer + L tokens whatever the ratio; 'drop' runs buffer + visible tokens
  ('drop exact'), rounded up to the static bucket in practice ('drop bucketed').
  """
  import math
  from dream_jax.models.patchify import token_layout
  from dream_jax.models.buckets import bucket_sizes
  m = config.model
  d, depth, buf = m.width, m.depth, m.buffer_size
  mlp = m.mlp_dim or int(d * m.mlp_ratio)
  seq = token_layout(config.tokenizer, config.data.image_size)["seq_len"]
  per_block = lambda s: 2 * s * d * (3 * d + d + 2 * mlp) + 4 * s * s * d
  visible = seq - math.ceil(seq * mask_ratio)
  bucket = next(k for k in bucket_sizes(seq, m.encoder_buckets) if k >= visible)
  return {"masked": depth * per_block(buf + seq),
          "drop exact": depth * per_block(buf + visible),
          "drop bucketed": depth * per_block(buf + bucket)}


def main(argv):
  del argv
  config = flags.FLAGS.config
  counts = count_params(config)
  for k, v in counts.items():
    if k != "total":
      print(f"{k:32s} {v:>15,d}")
  t, x = config.tokenizer, config.text
  if t.kind == "vae":
    src = "tiny random" if t.tiny_random else (t.vae_path or "sd-vae-ft-ema, path unset")
    print(f"{'frozen image tokenizer (VAE)':32s} {'not trained':>15s}  ({src})")
  if x.cond_encoder in ("t5", "minilm"):
    print(f"{'frozen text encoder':32s} {'not trained':>15s}  ({x.cond_encoder})")
  if flags.FLAGS.official:
    extra = official_extras(config)
    print(f"{'official unused (class emb)':32s} {extra:>15,d}")
    print(f"official-comparable total: {counts['total'] + extra:,d}")
  for r in (0.3, 0.9):
    f = encoder_flops(config, r)
    print(f"encoder fwd GFLOPs/image at mask {r}: " + ", ".join(
        f"{k} {v / 1e9:.2f}" for k, v in f.items()) +
          f" (drop/masked {f['drop bucketed'] / f['masked']:.2f})")
  print(f"total trainable: {counts['total']:,d}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
