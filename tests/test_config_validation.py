"""configs/validation.py: one table case per rule, each asserting the one-line message
`config.<key>=<value>: <what is allowed>` (the issue's silently accepted and unclear cases
are marked ISSUE). Pure Python, no JAX: the whole table runs in about a second."""
import pytest

from configs import common
from configs.validation import ConfigError, get, validate

FIDELITY = dict(kind="fidelity", every=0, at_start=False, num_prompts=8, modes=("plain",))


def base():
  from configs import dream_b16
  return dream_b16.get_config("runlocal")


def apply(c, overrides: dict):
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = c
    for p in path:
      node = node[p]
    with node.ignore_type():   # type errors are cases too: set any value
      node[last] = common.ConfigDict(value) if isinstance(value, dict) else value
  return c


# (overrides, key named in the message, fragment of what is allowed)
CASES = [
    # ---- the silently accepted cases (ISSUE) ----
    ({"masking.std": 0.0}, "masking.std", "> 0.0"),
    ({"masking.std": -0.5}, "masking.std", "> 0.0"),
    ({"optim.lr": -0.001}, "optim.lr", "> 0.0 or None"),
    ({"optim.grad_clip": -1.0}, "optim.grad_clip", ">= 0.0"),
    ({"optim.weight_decay": -0.04}, "optim.weight_decay", ">= 0.0"),
    ({"ema.decay": 1.5}, "ema.decay", "in [0.0, 1.0)"),
    ({"optim.b2": 1.5}, "optim.b2", "in [0.0, 1.0)"),
    ({"loss.caption_drop": 2.0}, "loss.caption_drop", "in [0.0, 1.0]"),
    ({"sampling.cfg": -2.0}, "sampling.cfg", ">= 0.0"),
    ({"ckpt.every": -1}, "ckpt.every", ">= 0"),
    ({"text.context_length": 2}, "text.context_length", ">= 3"),
    ({"sampling.sad_step": 4}, "sampling.sad_step", "in [1, 3]"),   # = num_steps
    # ---- the unclear cases (ISSUE) ----
    ({"compute_dtype": "float8"}, "compute_dtype", "one of ('float32', 'bfloat16'"),
    ({"data.image_size": 36}, "data.image_size", "divisible by tokenizer.vae_stride*patch_size=16"),
    ({"data.name": "imagenet"}, "data.name", "one of ('shapes', 'mnist'"),
    ({"masking.group_size": 0}, "masking.group_size", ">= 1"),
    ({"masking.kind": "fixed", "masking.fixed_ratio": 1.5}, "masking.fixed_ratio",
     "in [0.0, 1.0]"),
    ({"sampling.sad_step": 0}, "sampling.sad_step", "in [1, 3]"),
    ({"data.name": "mnist", "evals.gen": FIDELITY}, "evals.gen.kind",
     "needs data.name='shapes'"),
    # ---- top level ----
    ({"recipe": "mar"}, "recipe", "one of ('dream', 'fluid'"),
    ({"rng_impl": "mersenne"}, "rng_impl", "one of ('threefry2x32'"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"seed": 1.5}, "seed", "an integer"),
    ({"total_steps": 0}, "total_steps", ">= 1"),
    ({"batch_size": 0}, "batch_size", ">= 1"),
    ({"batch_size": 10}, "batch_size", "divisible by masking.group_size=4"),
    ({"grad_accum_steps": 0}, "grad_accum_steps", ">= 1"),
    ({"grad_accum_steps": 3}, "grad_accum_steps", "must divide batch_size=8"),
    ({"grad_accum_steps": 2}, "grad_accum_steps", "allow_accum_with_contrastive=True"),
    ({"grad_accum_steps": 4, "allow_accum_with_contrastive": True}, "grad_accum_steps",
     "micro-batch 2 must be divisible by masking.group_size=4"),
    ({"allow_accum_with_contrastive": "yes"}, "allow_accum_with_contrastive", "True or False"),
    ({"log_every": 0}, "log_every", ">= 1"),
    # ---- model ----
    ({"model.size": "XL"}, "model.size", "one of ('B', 'L', 'H', 'G')"),
    ({"model.width": 0}, "model.width", ">= 1"),
    ({"model.heads": 3}, "model.heads", "must divide model.width=32"),
    ({"model.dec_heads": 5}, "model.dec_heads", "must divide model.dec_width=32"),
    ({"model.depth": 0}, "model.depth", ">= 1"),
    ({"model.mlp_ratio": 0.0}, "model.mlp_ratio", "> 0.0"),
    ({"model.mlp_dim": 0}, "model.mlp_dim", ">= 1"),
    ({"model.buffer_size": -1}, "model.buffer_size", ">= 0"),
    ({"model.attn_dropout": 1.0}, "model.attn_dropout", "in [0.0, 1.0)"),
    ({"model.proj_dropout": -0.1}, "model.proj_dropout", "in [0.0, 1.0)"),
    ({"model.ln_eps": 0.0}, "model.ln_eps", "> 0.0"),
    ({"model.bn_momentum": 1.0}, "model.bn_momentum", "in [0.0, 1.0)"),
    ({"model.logit_scale_max": 1.0}, "model.logit_scale_max", ">= 2.65"),
    ({"model.noise_schedule": "sigmoid"}, "model.noise_schedule", "('cosine', 'linear')"),
    ({"model.diffusion_prediction": "velocity"}, "model.diffusion_prediction",
     "('eps', 'x0', 'v')"),
    ({"model.diffusion_loss_space": "l1"}, "model.diffusion_loss_space", "'v'"),
    ({"sampling.num_diffusion_steps": "2000"}, "sampling.num_diffusion_steps", "at most 1000"),
    ({"optim.eps": 0.0}, "optim.eps", "> 0.0"),
    ({"model.encoder_path": "full"}, "model.encoder_path", "('drop', 'masked')"),
    ({"model.encoder_buckets": 0}, "model.encoder_buckets", ">= 1"),
    ({"sampling.encoder_buckets": 0}, "sampling.encoder_buckets", ">= 1"),
    ({"sampling.head_buckets": 0}, "sampling.head_buckets", ">= 1"),
    ({"model.diffusion_batch_mul": 0}, "model.diffusion_batch_mul", ">= 1"),
    ({"model.remat": "yes"}, "model.remat", "one of ('none', 'dots', 'full')"),
    ({"model.scan_layers": "yes"}, "model.scan_layers", "True or False"),
    ({"text.token_init_std": 0.0}, "text.token_init_std", "> 0.0"),
    ({"mesh.param_rules": ()}, "mesh.param_rules", "(regex, spec) pairs"),
    # ---- tokenizer ----
    ({"tokenizer.kind": "vqgan"}, "tokenizer.kind", "('vae', 'identity', 'autoencoder')"),
    ({"tokenizer.patch_size": 3}, "data.image_size",
     "divisible by tokenizer.vae_stride*patch_size=24"),
    ({"tokenizer.kind": "identity", "tokenizer.patch_size": 5}, "data.image_size",
     "divisible by tokenizer.patch_size=5"),
    ({"tokenizer.pixel_scale": 0.0}, "tokenizer.pixel_scale", "> 0.0"),
    ({"tokenizer.scale_factor": -1.0}, "tokenizer.scale_factor", "> 0.0"),
    ({"tokenizer.dtype": "int8"}, "tokenizer.dtype", "one of ('float32'"),
    # ---- text ----
    ({"text.tokenizer": "sentencepiece"}, "text.tokenizer", "('clip_bpe', 'word')"),
    ({"text.vocab_size": 10}, "text.vocab_size", "the shapes vocabulary + pad, unk, sot, eot"),
    ({"text.word_vocab": ("a", "b"), "text.vocab_size": 5}, "text.vocab_size",
     "the word tokenizer's 2 words + pad, unk, sot, eot"),
    ({"data.name": "wds", "data.path": "x.tar"}, "text.word_vocab",
     "needs a data source with its own vocabulary"),
    ({"text.tokenizer": "clip_bpe", "text.vocab_size": 1000}, "text.vocab_size", ">= 49408"),
    ({"text.heads": 3}, "text.heads", "must divide text.width=32"),
    ({"text.word_vocab": ("a", "a")}, "text.word_vocab", "must not repeat a word"),
    ({"text.word_vocab": ("a b",)}, "text.word_vocab", "no spaces"),
    ({"text.cond_encoder": "bert"}, "text.cond_encoder", "('t5', 'minilm'"),
    ({"text.cond_len": 0}, "text.cond_len", ">= 1"),
    ({"text.small_heads": 3}, "text.small_heads", "must divide text.small_width=256"),
    # ---- masking ----
    ({"masking.kind": "beta"}, "masking.kind", "('truncnorm', 'uniform'"),
    ({"masking.min": 0.8, "masking.max": 0.5}, "masking.max", ">= masking.min=0.8"),
    ({"masking.min": 0.5, "masking.max": 0.5}, "masking.max", "use kind='fixed'"),
    ({"masking.max": 1.5}, "masking.max", "in [0.0, 1.0]"),
    ({"masking.center_end": 1.2}, "masking.center_end", "in [0.0, 1.0]"),
    ({"masking.warmup_start": 0.5, "masking.warmup_end": 0.2}, "masking.warmup_end",
     ">= masking.warmup_start=0.5"),
    ({"masking.shape": "step"}, "masking.shape", "('linear', 'cosine')"),
    # ---- schedule, loss, optimiser, EMA ----
    ({"schedule.kind": "cosine"}, "schedule.kind", "('warmup_constant', 'warmup_cosine')"),
    ({"schedule.warmup": 1.5}, "schedule.warmup", "in [0.0, 1.0]"),
    ({"schedule.final_lr_frac": -0.1}, "schedule.final_lr_frac", "in [0.0, 1.0]"),
    ({"loss.w_diffusion": -1.0}, "loss.w_diffusion", ">= 0.0"),
    ({"loss.w_diffusion": 0.0, "loss.w_contrastive": 0.0}, "loss.w_diffusion",
     "nothing to train"),
    ({"loss.clip_max_mask_ratio": 2.0}, "loss.clip_max_mask_ratio", "in [0.0, 1.0]"),
    ({"loss.w_token_regression": -1.0}, "loss.w_token_regression", ">= 0.0"),
    ({"optim.base_lr": 0.0}, "optim.base_lr", "> 0.0"),
    ({"optim.b1": 1.0}, "optim.b1", "in [0.0, 1.0)"),
    ({"optim.head_lr_mult": 0.0}, "optim.head_lr_mult", "> 0.0"),
    ({"optim.moment_dtype": "float16"}, "optim.moment_dtype", "one of ('float32', 'bfloat16')"),
    ({"optim.lr": float("nan")}, "optim.lr", "> 0.0"),
    ({"ema.warmup": 1}, "ema.warmup", "True or False"),
    # ---- data ----
    ({"data.num_workers": 0}, "data.num_workers", ">= 1"),
    ({"data.eval_size": 0}, "data.eval_size", ">= 1"),
    ({"data.max_objects": 3}, "data.max_objects", "(1, 2)"),
    ({"data.two_object_prob": 1.5}, "data.two_object_prob", "in [0.0, 1.0]"),
    ({"data.max_bad_fraction": 1.5}, "data.max_bad_fraction", "in [0.0, 1.0]"),
    ({"data.path": 3}, "data.path", "a string"),
    # ---- sampling ----
    ({"sampling.num_steps": 0}, "sampling.num_steps", ">= 1"),
    ({"sampling.num_steps": 1}, "sampling.num_steps", ">= 2 for SAD"),
    ({"sampling.num_diffusion_steps": "0"}, "sampling.num_diffusion_steps", "respacing spec"),
    ({"sampling.num_diffusion_steps": 5}, "sampling.num_diffusion_steps", "respacing spec"),
    ({"sampling.cfg_schedule": "cosine"}, "sampling.cfg_schedule", "('linear', 'constant')"),
    ({"sampling.temperature": -1.0}, "sampling.temperature", ">= 0.0"),
    ({"sampling.clip_denoised": 0.0}, "sampling.clip_denoised", "> 0.0 or None"),
    ({"sampling.sad_candidates": 0}, "sampling.sad_candidates", ">= 1"),
    ({"sampling.sad_share": 1.0}, "sampling.sad_share", "in (0.0, 1.0)"),
    ({"sampling.every": -1}, "sampling.every", ">= 0"),
    ({"sampling.prompts": ("ok", 3)}, "sampling.prompts", "tuple of strings"),
    # ---- mesh, checkpoints ----
    ({"mesh.data": 0}, "mesh.data", "-1 (all devices not used by fsdp)"),
    ({"mesh.fsdp": 0}, "mesh.fsdp", ">= 1"),
    ({"ckpt.keep": -1}, "ckpt.keep", ">= 0"),
    ({"ckpt.permanent_every": -5}, "ckpt.permanent_every", ">= 0"),
    # ---- evaluators ----
    ({"evals.x": dict(kind="inception_score")}, "evals.x.kind", "one of ('heldout', 'linear_probe'"),
    ({"evals.x": dict(kind="heldout", every=-1)}, "evals.x.every", ">= 0"),
    ({"evals.x": dict(kind="heldout", diffusion_ratio=1.5)}, "evals.x.diffusion_ratio",
     "in [0.0, 1.0]"),
    ({"evals.x": dict(FIDELITY, modes=("greedy",))}, "evals.x.modes", "non-empty tuple"),
    ({"evals.x": dict(FIDELITY, num_prompts=0)}, "evals.x.num_prompts", ">= 1"),
    ({"evals.x": dict(FIDELITY, sad_step=4)}, "evals.x.sad_step", "in [1, 3]"),
    ({"evals.x": dict(every=2)}, "evals.x", "needs a 'kind'"),
]


@pytest.mark.parametrize("overrides,key,fragment", CASES,
                         ids=[f"{i:03d}-{c[1]}" for i, c in enumerate(CASES)])
def test_invalid_value_is_named_in_one_line(overrides, key, fragment):
  c = apply(base(), overrides)
  with pytest.raises(ConfigError) as info:
    validate(c)
  msg = str(info.value)
  value = get(c, key)
  value = value.to_dict() if hasattr(value, "to_dict") else value
  assert msg.startswith(f"config.{key}={value!r}: "), msg
  assert fragment in msg, msg
  assert "\n" not in msg and isinstance(info.value, ValueError)
  assert info.value.key == key


def test_table_covers_enough_rules():
  assert len(CASES) >= 60
  assert len({c[1] for c in CASES}) >= 60      # distinct keys, not one rule repeated


@pytest.mark.parametrize("overrides", [
    {"sampling.temperature": 0.0},          # ISSUE: defined as noise-free head sampling
    {"sampling.cfg": 0.0},                  # unconditional sampling
    {"sampling.sad_step": 3},               # num_steps - 1
    {"sampling.sad_share": 0.5},            # replaces sad_step (then not checked)
    {"ckpt.every": 0, "ckpt.keep": 0},      # checkpoint only at the end, keep all
    {"optim.grad_clip": 0.0, "optim.weight_decay": 0.0},
    {"masking.kind": "fixed", "masking.fixed_ratio": 1.0},
    {"evals.h": dict(kind="heldout", every=2)},
    {"evals.gen": FIDELITY},
])
def test_defined_values_are_accepted(overrides):
  validate(apply(base(), overrides))


def test_paths_are_required_for_a_run_only():
  """A config file may leave data.path to the command line; main.py validates for_run."""
  own_vocab = {"text.word_vocab": ("photo",)}      # wds/tfds captions have no fixed vocabulary
  c = apply(base(), {"data.name": "wds", **own_vocab})
  validate(c)
  with pytest.raises(ConfigError, match=r"^config.data.path='': must be set for "
                                        r"data.name='wds'$"):
    validate(c, for_run=True)
  c = apply(base(), {"data.name": "tfds", **own_vocab})
  with pytest.raises(ConfigError, match=r"^config.data.tfds_name='': must be a non-empty"):
    validate(c, for_run=True)


def test_every_shipped_config_is_valid():
  import importlib
  for name, arg in (("dream_b16", None), ("dream_l16", "runlocal"), ("dream_g16", None),
                    ("demo", None), ("anchor_demo", None), ("official_tiny", None)):
    validate(importlib.import_module(f"configs.{name}").get_config(arg))


def test_library_names_match_the_validation_lists():
  """configs/ import nothing of dream_jax, so the names it must know are copies: check them."""
  from configs import validation as v
  from dream_jax.data import SOURCES
  from dream_jax.evaluators import EVALUATORS
  from dream_jax.evaluators.geneval import MODES
  from dream_jax.models.layers import REMAT_POLICIES
  assert v.DATA_SOURCES == SOURCES
  assert set(v.EVALUATOR_KINDS) == set(EVALUATORS)
  assert set(v.FIDELITY_MODES) == set(MODES)
  assert tuple(v.REMAT_POLICIES) == tuple(REMAT_POLICIES)
  assert tuple(v.MODEL_SIZES) == tuple(common.MODEL_SIZES)
