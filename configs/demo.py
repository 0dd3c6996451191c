"""The CPU demo: DREAM on the built-in captioned shapes, both skills in minutes.

  python main.py --config=configs/demo.py --workdir=/tmp/dream_demo        # generates
  python main.py --config=configs/demo.py:paper --workdir=/tmp/dream_paper # paper objective

Two recipes share the model, data and schedule below:
  default   the paper's losses PLUS small-run generation settings (named deviations, last
            paragraph): pixel tokens, a token-regression loss x100, the linear noise schedule,
            head lr x4, temperature 0.1. It generates: colour 0.41, grid cell 0.39 on 64
            mixed prompts (chance 0.11 / 0.016), retrieval R@1 ~0.35-0.40 (README).
  paper     the paper's objective only (diffusion + weighted contrastive loss, the paper's
            gating, Masking Warmup, no auxiliary loss) on 16-d latents of a frozen tokenizer
            fitted to the data (the analogue of the paper's SD-VAE tokens). It learns
            retrieval (R@1 0.34 / 0.40) and a caption-dependent decoder condition (z_info@0.9
            8.6e-3) but NOT generation in 500 steps: mini-GenEval colour 0 (docs/history/
            2026-12-01-small-recipe.md). The equal-budget study (dream_jax/study.py) runs it.
Cost: 500 steps, ~8-9 min on a quiet 2-core CPU (473 s user CPU for `paper`; its tokenizer
fit adds ~40 s once, cached).

What differs from the paper recipe (docs/DESIGN.md section 2, "small runs"):
  * a word tokenizer over the dataset's vocabulary; the CLIP text tower's token features as
    the generation condition (no pretrained T5 offline);
  * a tiny model; fp32 compute (bf16 gives no speedup on CPU); batch 64;
  * EMA with warm-up (decay min(0.999, (1+t)/(10+t))): with 0.9999 and a few hundred steps the
    EMA would still be the initialisation;
  * a larger learning rate (1e-3, absolute), warm-up 5% of the run, cosine to 10% (paper:
    constant after a 25% warm-up);
  * Masking Warmup centre 0 -> 1 over the first 40% of the run (paper: 36/48), so the late
    part trains generation at high ratios;
  * the CLIP tower's token embedding initialised with std 0.02 (OpenCLIP; official 1.0);
  * contrastive weight 0.05 (paper 0.005): at batch 64 the InfoNCE gradient is otherwise too
    small to align the towers within a few hundred steps;
  * masking groups of 16 (paper 64) so one step mixes 4 mask ratios;
  * sampling: 16 MAR steps (paper 64), 50 head steps (paper 100), SAD with K=4 at step 4,
    per-token temperature 0.9 (MAR's range), CFG 3.
`paper` keeps the paper's settings here: the cosine noise schedule, eps prediction, one
learning rate for every parameter (`optim.head_lr_mult=1`), no x0 clipping,
`loss.w_token_regression=0`; and uses the fitted tokenizer:
  * PCA of 4x4x3 pixel patches to 16 components (a linear autoencoder in closed form,
    `tokenizer.kind='autoencoder'`, `ae_model='pca'`) fitted to 8192 training images,
    latents centred and scaled by measured factors: 32 px -> 64 tokens of dim 16 (paper:
    the frozen SD KL-VAE, 256 px -> 256 tokens of dim 16). A tiny SD KL-VAE
    (`ae_model='kl_vae'`) did not train to a usable reconstruction in a minute here.

The default (generating) recipe deviates further, each setting needed in a few hundred steps
(docs/history/2026-12-01-demo-generation.md): identity pixel tokens (4x4 patches, dim 48)
centred by `tokenizer.pixel_shift=-0.93`; the linear noise schedule; an auxiliary
token-regression loss x100 (`loss.w_token_regression`, a zero-initialised linear readout
z -> token); head lr x4; x0 clipped to [-2, 2]; per-token temperature 0.1.
"""
from configs import common
from configs import evaluators as ev


def get_config(arg=None):
  """arg: steps=N (500); evals='train' (held-out losses every 100 steps and mini-GenEval at
  the end) | 'full' (also the representation and generation suite: what
  `python -m dream_jax.evaluate --workdir=W --evals_config=configs/demo.py:evals=full` runs)
  | 'study' (the equal-budget study's smaller suite, at the end only: dream_jax/study.py);
  recipe='dream' | 'fluid' | 'clip' | 'nowarmup' (configs/common.py:apply_recipe, the
  paper's baselines in the same model and data); paper (the paper's objective only, on the
  fitted tokenizer, without the generation settings: module docstring)."""
  a = common.parse_arg(arg, steps=500, evals="train", recipe="dream", paper=False)
  c = common.base_config()
  c.total_steps = a.steps
  c.batch_size = 64
  c.compute_dtype = "float32"
  c.log_every = 25

  c.model.update(width=128, depth=2, heads=4, dec_width=128, dec_depth=2, dec_heads=4,
                 mlp_dim=None, buffer_size=4, embed_dim=64, proj_hidden=256,
                 aligner_depth=1, diff_depth=2, diff_width=128, diffusion_batch_mul=2,
                 encoder_buckets=2, diffusion_buckets=2,
                 attn_dropout=0.0, proj_dropout=0.0, noise_schedule="cosine")
  # 16-d latents of a frozen tokenizer fitted to the data (PCA of 4x4 patches; docstring).
  c.tokenizer.update(kind="autoencoder", ae_model="pca", ae_patch=4, vae_stride=4,
                     latent_channels=16, patch_size=1, ae_train_size=8192)
  common.use_shapes_vocab(c, context_length=16)
  # Token-embedding init std 0.02 (OpenCLIP; official 1.0): the demo's recipe and its measured
  # numbers were set with it; the tower's token features are also the generation condition.
  c.text.update(width=128, layers=2, heads=4, cond_encoder="clip_tower", token_init_std=0.02)

  c.masking.update(warmup_end=0.4, group_size=16)
  c.schedule.update(kind="warmup_cosine", warmup=0.05, final_lr_frac=0.1)
  c.loss.w_contrastive = 0.05
  c.optim.lr = 1e-3
  c.loss.w_token_regression = 0.0   # paper: no auxiliary loss
  c.ema.update(decay=0.999, warmup=True)

  c.data.update(name="shapes", image_size=32, num_workers=2, eval_size=256)
  c.sampling.temperature = 0.9
  c.sampling.prompts = (
      "a large red circle in the top left", "a large blue square in the center",
      "a large green triangle in the bottom right", "a large yellow diamond on the left",
      "a small white circle on the right", "a large purple square at the top",
      "a large orange circle at the bottom", "a large cyan triangle in the top right")
  c.sampling.every = 0
  c.sampling.update(num_steps=16, num_diffusion_steps="50", cfg=3.0, sad_candidates=4,
                    sad_step=4)
  c.ckpt.update(every=100, keep=2)
  c.evals.heldout = ev.heldout(every=100, diffusion_ratio=0.9, seed=0)
  # Mini-GenEval (the sampler's evaluator): 64 held-out single-object prompts (issue 16's
  # target), plain decoding and SAD, scored by the shapes checker; at the end only.
  c.evals.geneval = ev.geneval(every=0, at_start=False, num_prompts=64, modes=("plain", "sad"),
                               batch=32, max_objects=1)
  if not a.paper:
    use_small_run_generation_settings(c)
  common.apply_recipe(c, a.recipe)
  if a.evals == "full":
    add_full_suite(c)
  elif a.evals == "study":
    add_study_suite(c)
  elif a.evals != "train":
    raise ValueError(f"configs/demo.py: evals must be 'train', 'full' or 'study', "
                     f"got {a.evals!r}")
  if a.recipe == "clip":   # no diffusion loss: nothing to sample
    del c.evals["geneval"]
  return common.finalize(c)


def use_small_run_generation_settings(c) -> None:
  """The default demo's non-paper settings, with which it generates (module docstring)."""
  # Centred pixel tokens: the images are ~93% black, so black -> -0.07 (tokens in
  # [-0.07, 1.93]); x0 clipped to [-2, 2], which covers that range.
  c.tokenizer.update(kind="identity", patch_size=4, pixel_shift=-0.93)
  c.model.noise_schedule = "linear"
  c.loss.w_token_regression = 100.0    # zero-initialised linear readout z -> token, MSE
  c.optim.head_lr_mult = 4.0
  c.sampling.update(clip_denoised=2.0, temperature=0.1)


def add_study_suite(c) -> None:
  """The study's suite (dream_jax/study.py), at the end of training only and smaller than
  'full' so 12 runs fit an hour of a shared 2-core CPU: probes and few-shot on the shapes
  attributes and MNIST-5k, zero-shot, retrieval R@1/5, proxy FD (64 samples), and
  mini-GenEval on 32 prompts with plain decoding, SAD and best-of-K for DREAM (plain only
  for the baselines: SAD and best-of-K rank candidates with the CLIP towers, which Fluid-only
  does not train)."""
  end = dict(every=0, at_start=False)
  shapes = lambda label: ev.shapes_data(label, train_size=512, test_size=256)
  probe = lambda data: ev.linear_probe(data=data, batch_size=256, base_lr=100.0, **end)
  c.evals.probe_color = probe(shapes("color"))
  c.evals.probe_shape = probe(shapes("shape"))
  c.evals.probe_cell = probe(shapes("cell"))
  c.evals.probe_mnist = probe(ev.mnist_data())
  c.evals.fewshot_color = ev.fewshot(data=shapes("color"), **end)
  c.evals.fewshot_mnist = ev.fewshot(data=ev.mnist_data(), **end)
  c.evals.zeroshot_color = ev.zeroshot(data=shapes("color"), **end)
  c.evals.zeroshot_shape = ev.zeroshot(data=shapes("shape"), templates=ev.SHAPES_SHAPE_TEMPLATES,
                                       **end)
  c.evals.retrieval = ev.retrieval(data=ev.shapes_data("none", train_size=0, test_size=256),
                                   **end)
  c.evals.heldout.every = 0
  if c.recipe != "clip":
    c.evals.fid = ev.fid(num_samples=64, batch=32, **end)
    modes = ("plain", "sad", "best_of_k") if c.recipe == "dream" else ("plain",)
    c.evals.geneval = ev.geneval(num_prompts=32, modes=modes, batch=32, **end)


def add_full_suite(c) -> None:
  """Representation and generation evaluators on the shapes data and MNIST-5k (CPU, ~2 min)."""
  shapes = lambda label, **kw: ev.shapes_data(label, train_size=1024, test_size=512, **kw)
  # LARS on ~1-5k cached features: MAE's 90 epochs (10 warm-up) at batch 256; base_lr 100
  # stands in for MAE's ~7k steps at lr 6.4 (configs/evaluators.py:linear_probe).
  probe = lambda data: ev.linear_probe(data=data, batch_size=256, base_lr=100.0)
  c.evals.probe_color = probe(shapes("color"))
  c.evals.probe_shape = probe(shapes("shape"))
  c.evals.probe_cell = probe(shapes("cell"))
  c.evals.probe_mnist = probe(ev.mnist_data())
  c.evals.fewshot_color = ev.fewshot(data=shapes("color"))
  c.evals.fewshot_mnist = ev.fewshot(data=ev.mnist_data())
  c.evals.zeroshot_color = ev.zeroshot(data=shapes("color"))
  c.evals.zeroshot_shape = ev.zeroshot(data=shapes("shape"),
                                       templates=ev.SHAPES_SHAPE_TEMPLATES)
  c.evals.retrieval = ev.retrieval(data=ev.shapes_data("none", train_size=0, test_size=512))
  c.evals.fid = ev.fid(num_samples=256, batch=32)
  c.evals.segmentation = ev.segmentation()
  c.evals.depth = ev.depth()
