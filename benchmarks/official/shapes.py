"""The official DREAM constructor arguments and inputs at the benchmark shapes.

Pure data (no torch): the worker builds the official model from these, and the tests check
them against our configs (configs/anchor_demo.py, configs/dream_b16.py as the benchmarks
set them). Shapes are docs/PERF_ANCHOR.md's; loss settings are the official training
defaults (tests/fixtures/official_tiny/README.md).
"""
from __future__ import annotations

# Constructor keyword arguments of the official `models.dream.DREAM` (besides text_cfg and
# norm_layer = LayerNorm(eps=1e-6), which the worker adds), and of its `CLIPTextCfg`.
_COMMON = dict(vae_stride=8, patch_size=2, mlp_ratio=4.0, vae_embed_dim=4,
               label_drop_prob=0.0, class_num=1000, attn_dropout=0.1, proj_dropout=0.1,
               diffusion_batch_mul=4, vl_projection="post_mlp_stablerep",
               txt_projection="linear", ssl_mlp_dim=1024, embed_dim=256,
               t5_embed_dim=1024, min_ratio_for_clip_loss=0.25,
               min_masked_ratio_for_mar_loss=0.5, filter_clip_loss=True,
               clip_loss_on="image-text", grad_checkpointing=False)

MODELS = {
    "anchor": dict(_COMMON, img_size=128, encoder_embed_dim=256, encoder_depth=4,
                   encoder_num_heads=4, decoder_embed_dim=256, decoder_depth=4,
                   decoder_num_heads=4, buffer_size=16, diffloss_d=3, diffloss_w=256,
                   text_aligner_depth=2, text_max_len=32),
    "b16": dict(_COMMON, img_size=256, encoder_embed_dim=768, encoder_depth=12,
                encoder_num_heads=12, decoder_embed_dim=768, decoder_depth=12,
                decoder_num_heads=12, buffer_size=64, diffloss_d=3, diffloss_w=1024,
                text_aligner_depth=6, text_max_len=128),
}
TEXT = {
    "anchor": dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=4),
    "b16": dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
}
TRAIN = {"anchor": dict(batch=32, mask_ratio=0.5), "b16": dict(batch=4, mask_ratio=0.5)}
# images P, decoding steps N, diffusion steps (respacing string), SAD candidates K and
# selection step T (the official clip_critic_threshold), CFG scale with the linear schedule.
SAMPLE = {
    "anchor": dict(prompts=16, steps=16, diffusion="50", k=4, t=4, cfg=3.0),
    "b16": dict(prompts=2, steps=64, diffusion="100", k=4, t=32, cfg=3.0),
}
# The optimiser step on both sides: clip the global norm at 3.0, AdamW, EMA of the weights.
OPTIM = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.02, grad_clip=3.0, ema=0.9999,
             w_mar=1.0, w_clip=0.005)
