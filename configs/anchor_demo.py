"""The anchor demo shapes of docs/PERF_ANCHOR.md (what the official PyTorch DREAM was timed on).

  python benchmarks/train_step.py --shapes=anchor [--official=PATH]   # step time (side by side)
  python main.py --config=configs/anchor_demo.py --workdir=W   # trains (tiny random VAE / T5)

Shapes: 64 image tokens of dim 16 (SD-VAE layout at 128 px: latent 4x16x16, patch 2);
encoder and decoder width 256, 4 blocks each, 4 heads, MLP ratio 4; 16 buffer tokens; text
aligner depth 2 over frozen text features of 32 x 1024 (T5-Large width; here a tiny random
T5 of width 1024, or random features fed as `cond_embeddings` by the benchmark); CLIP text
tower 256 wide, 4 layers, 4 heads, context 77, vocab 49408 (BPE); projection MLP
256->1024->1024->256; diffusion head 3 x 256, diffusion_batch_mul 4, 50 sampling steps;
dropout 0.1; batch 32; mask ratio fixed at 0.5. fp32 (the official CPU numbers are fp32).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.total_steps = 100
  c.batch_size = 32
  c.compute_dtype = "float32"
  c.log_every = 10
  c.model.update(width=256, depth=4, heads=4, dec_width=256, dec_depth=4, dec_heads=4,
                 mlp_dim=None, mlp_ratio=4.0, buffer_size=16, embed_dim=256, proj_hidden=1024,
                 aligner_depth=2, diff_depth=3, diff_width=256, diffusion_batch_mul=4,
                 attn_dropout=0.1, proj_dropout=0.1)
  c.tokenizer.update(kind="vae", patch_size=2, tiny_random=True)
  c.text.update(tokenizer="clip_bpe", context_length=77, vocab_size=49408, width=256,
                layers=4, heads=4, cond_encoder="t5", tiny_random=True, cond_len=32,
                cond_dim=1024)
  c.masking.update(kind="fixed", fixed_ratio=0.5, group_size=32)
  c.data.update(name="shapes", image_size=128, eval_size=64)
  c.sampling.update(num_steps=16, num_diffusion_steps="50", sad_candidates=4, sad_step=4)
  return common.finalize(c)
