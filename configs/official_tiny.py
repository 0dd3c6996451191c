"""The tiny official DREAM recorded in tests/fixtures/official_tiny (parity tests only).

64x64 images -> 4x8x8 stand-in latents -> 16 tokens of dim 16; width 64, 2+2 blocks, 4 heads;
4 buffer tokens; aligner depth 1 over 8 x 32 stand-in T5 features; CLIP tower 64/2/4 with
vocab 1000; embed 32; projection hidden 64; head 2 x 64; dropout 0; diffusion_batch_mul 1.

  python -m dream_jax.tools.convert_weights --kind=dream_torch \
      --src=tests/fixtures/official_tiny/weights.safetensors --dst=/tmp/official_tiny
"""
from configs import common


def get_config(arg=None):
  common.parse_arg(arg)
  c = common.base_config()
  c.compute_dtype = "float32"
  c.batch_size = 4
  c.model.update(width=64, depth=2, heads=4, dec_width=64, dec_depth=2, dec_heads=4,
                 mlp_ratio=4.0, buffer_size=4, attn_dropout=0.0, proj_dropout=0.0,
                 embed_dim=32, proj_hidden=64, aligner_depth=1, diff_depth=2, diff_width=64,
                 diffusion_batch_mul=1, encoder_buckets=1,
                 diffusion_buckets=1)
  c.tokenizer.update(kind="vae", tiny_random=True)
  c.data.image_size = 64
  c.text.update(tokenizer="word", context_length=77, vocab_size=1000, width=64, layers=2,
                heads=4, cond_encoder="t5", cond_len=8, cond_dim=32, tiny_random=True)
  c.masking.group_size = 4
  c.data.image_size = 64
  c.sampling.update(num_diffusion_steps="50", encoder_buckets=1, head_buckets=1)
  return common.finalize(c)
