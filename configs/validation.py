"""The one validation of a DREAM config: every key's type, range, enumeration and the
constraints between keys, checked before anything is built or written.

`validate(c)` raises `ConfigError` (a ValueError) on the FIRST violation, as one line

    config.<key>=<value>: <what is allowed>

so `main.py` can print it without a traceback. `configs/common.finalize` calls it, and
`main.py` calls it again after the `--config.x=y` overrides.

Definitions that are choices, not facts (documented here once):
  * sampling.temperature >= 0: it scales the diffusion head's per-step noise (MAR); 0 is
    allowed and means noise-free (deterministic) head sampling.
  * sampling.cfg >= 0: 1 is no guidance, 0 is unconditional sampling; below 0 would push
    away from the caption.
  * sampling.sad_step in [1, num_steps - 1]: T = 0 scores candidates with nothing decoded,
    T = num_steps is best-of-K (use that mode instead).
  * text.context_length >= 3: start + at least one token + end (longer captions are cut,
    as CLIP does).
  * ckpt.every = 0: checkpoint only at the end; ckpt.keep = 0: keep every checkpoint.

This module imports nothing of `dream_jax` (configs are a leaf); the few names it must
know from the library (evaluator kinds, data sources) are listed here and a test checks
them against the library.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

RECIPES = ("dream", "fluid", "clip", "nowarmup")
TOKENIZER_KINDS = ("vae", "identity", "autoencoder")
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")   # config.rng_impl; the first is the default
MODEL_SIZES = ("B", "L", "H", "G")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
DATA_SOURCES = ("shapes", "mnist", "tfds", "wds", "folder", "cache")   # dream_jax.data.SOURCES
EVALUATOR_KINDS = ("heldout", "linear_probe", "fewshot", "zeroshot", "retrieval", "geneval",
                   "fidelity", "fid", "segmentation", "depth")   # dream_jax.evaluators.EVALUATORS
REMAT_POLICIES = ("none", "dots", "full")            # dream_jax.models.layers.REMAT_POLICIES
FIDELITY_MODES = ("plain", "sad", "best_of_k")        # dream_jax.evaluators.fidelity.MODES
# Sources that need `data.path` (tfds falls back to TFDS_DATA_DIR, the others read no files).
SOURCES_WITH_PATH = ("wds", "folder", "cache")
SOURCES_WITH_VOCAB = ("shapes", "mnist")              # dream_jax.data.dataset_vocab
MIN_CONTEXT_LENGTH = 3
_SPACING = re.compile(r"^(ddim[1-9]\d*|[1-9]\d*(,[1-9]\d*)*)$")   # space_timesteps specs


class ConfigError(ValueError):
  """One invalid config value: `key`, `value` and what is allowed, as one line."""

  def __init__(self, key: str, value: Any, allowed: str):
    super().__init__(f"config.{key}={value!r}: {allowed}")
    self.key, self.value, self.allowed = key, value, allowed


def get(c, key: str):
  """c['a.b.c'] by a dotted key (ConfigDict or dict)."""
  node = c
  for part in key.split("."):
    node = node[part]
  return node


class _Checker:
  """Small vocabulary of checks on one config; each raises ConfigError naming the key."""

  def __init__(self, c):
    self.c = c
    self.for_run = False

  def fail(self, key, allowed, value=None):
    raise ConfigError(key, get(self.c, key) if value is None else value, allowed)

  def need(self, cond: bool, key: str, allowed: str):
    if not cond:
      self.fail(key, allowed)

  def one_of(self, key: str, allowed: Iterable):
    allowed = tuple(allowed)
    self.need(get(self.c, key) in allowed, key, f"must be one of {allowed}")

  def boolean(self, key: str):
    self.need(isinstance(get(self.c, key), bool), key, "must be True or False")

  def string(self, key: str, non_empty: bool = False):
    v = get(self.c, key)
    self.need(isinstance(v, str), key, "must be a string")
    if non_empty:
      self.need(bool(v.strip()), key, "must be a non-empty string")

  def integer(self, key: str, lo: int | None = None, hi: int | None = None,
              none_ok: bool = False):
    v = get(self.c, key)
    if v is None and none_ok:
      return
    rng = _range_text(lo, hi, False, False, "an integer")
    self.need(isinstance(v, int) and not isinstance(v, bool), key,
              rng + (" or None" if none_ok else ""))
    self.need((lo is None or v >= lo) and (hi is None or v <= hi), key, rng)

  def number(self, key: str, lo: float | None = None, hi: float | None = None, *,
             lo_open: bool = False, hi_open: bool = False, none_ok: bool = False):
    v = get(self.c, key)
    if v is None and none_ok:
      return
    rng = _range_text(lo, hi, lo_open, hi_open, "a number") + (" or None" if none_ok else "")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    self.need(ok, key, rng)
    ok = ((lo is None or (v > lo if lo_open else v >= lo))
          and (hi is None or (v < hi if hi_open else v <= hi)))
    self.need(ok, key, rng)

  def fraction(self, key: str, *, hi_open: bool = False, lo_open: bool = False,
               none_ok: bool = False):
    self.number(key, 0.0, 1.0, lo_open=lo_open, hi_open=hi_open, none_ok=none_ok)

  def strings(self, key: str):
    v = get(self.c, key)
    self.need(isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v), key,
              "must be a tuple of strings")


def _range_text(lo, hi, lo_open, hi_open, what) -> str:
  if lo is not None and hi is not None:
    return f"must be {what} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  if lo is not None:
    return f"must be {what} {'>' if lo_open else '>='} {lo}"
  if hi is not None:
    return f"must be {what} {'<' if hi_open else '<='} {hi}"
  return f"must be {what}"


def validate(c, *, for_run: bool = False) -> None:
  """Checks every key of `c` (see the module docstring); raises ConfigError on the first.

  for_run=True (main.py, after overrides) also requires what only a run needs and a config
  file may leave for the command line: `data.path` of file-backed sources, `data.tfds_name`.
  """
  k = _Checker(c)
  k.for_run = for_run
  _top(k, c)
  _model(k, c)
  _tokenizer(k, c)
  _text(k, c)
  _masking(k, c)
  _schedule_loss_optim(k, c)
  _data(k, c)
  _sampling(k, c)
  _mesh_ckpt(k, c)
  _evals(k, c)


def _top(k: _Checker, c) -> None:
  k.one_of("recipe", RECIPES)
  k.one_of("rng_impl", RNG_IMPLS)
  k.integer("seed", 0)
  k.integer("total_steps", 1)
  k.integer("batch_size", 1)
  k.one_of("compute_dtype", COMPUTE_DTYPES)
  k.integer("grad_accum_steps", 1)
  k.boolean("allow_accum_with_contrastive")
  k.integer("log_every", 1)
  a = c.grad_accum_steps
  k.need(c.batch_size % a == 0, "grad_accum_steps", f"must divide batch_size={c.batch_size}")
  if a > 1 and c.loss.w_contrastive > 0:
    k.need(c.allow_accum_with_contrastive, "grad_accum_steps",
           "gradient accumulation changes the contrastive objective (fewer negatives, per-"
           "micro-batch BatchNorm statistics and gates); set allow_accum_with_contrastive=True")


def _model(k: _Checker, c) -> None:
  m = c.model
  k.one_of("model.size", MODEL_SIZES)
  for name in ("width", "depth", "heads", "dec_width", "dec_depth", "dec_heads", "embed_dim",
               "proj_hidden", "aligner_depth", "diff_depth", "diff_width",
               "diffusion_batch_mul", "num_train_timesteps", "encoder_buckets",
               "diffusion_buckets"):
    k.integer(f"model.{name}", 1)
  k.integer("model.buffer_size", 0)
  k.integer("model.mlp_dim", 1, none_ok=True)
  k.need(m.width % m.heads == 0, "model.heads", f"must divide model.width={m.width}")
  k.need(m.dec_width % m.dec_heads == 0, "model.dec_heads",
         f"must divide model.dec_width={m.dec_width}")
  k.number("model.mlp_ratio", 0.0, lo_open=True)
  k.fraction("model.attn_dropout", hi_open=True)
  k.fraction("model.proj_dropout", hi_open=True)
  k.number("model.ln_eps", 0.0, lo_open=True)
  k.number("model.bn_eps", 0.0, lo_open=True)
  k.fraction("model.bn_momentum", hi_open=True)
  k.number("model.logit_scale_init")
  k.number("model.logit_scale_max", m.logit_scale_init, none_ok=True)
  k.boolean("model.mask_text_padding")
  k.one_of("model.noise_schedule", ("cosine", "linear"))
  k.one_of("model.diffusion_prediction", ("eps", "x0", "v"))
  k.one_of("model.diffusion_loss_space", ("eps", "v", "x0"))
  k.one_of("model.diffusion_t_sampling", ("uniform", "logit_normal"))
  k.one_of("model.pos_embed_init", ("normal", "sincos2d"))
  k.number("model.diffusion_t_logit_mean")
  k.number("model.diffusion_t_logit_std", 0.0, lo_open=True)
  k.one_of("model.encoder_path", ("drop", "masked"))
  # Older configs stored a bool (True = 'full', False = 'none'); both still load.
  k.need(m.remat in REMAT_POLICIES or isinstance(m.remat, bool), "model.remat",
         f"must be one of {REMAT_POLICIES}")
  k.boolean("model.scan_layers")


def _spacing(k: _Checker, key: str, num_timesteps: int) -> None:
  v = get(k.c, key)
  allowed = (f"a respacing spec of the {num_timesteps} training timesteps: 'N' (e.g. '100'), "
             "'N1,N2,...' or 'ddimN', each count >= 1")
  k.need(isinstance(v, str) and bool(_SPACING.match(v)), key, allowed)
  if v.startswith("ddim"):
    k.need(int(v[4:]) <= num_timesteps, key, allowed)
  else:
    parts = [int(x) for x in v.split(",")]
    k.need(all(p <= num_timesteps // len(parts) for p in parts), key,
           f"{allowed}; at most {num_timesteps // len(parts)} per section")


def _tokenizer(k: _Checker, c) -> None:
  t = c.tokenizer
  k.one_of("tokenizer.kind", TOKENIZER_KINDS)
  for name in ("patch_size", "vae_stride", "latent_channels"):
    k.integer(f"tokenizer.{name}", 1)
  k.integer("data.image_size", 1)
  latent = t.kind in ("vae", "autoencoder")
  stride = t.vae_stride if latent else 1
  # The tokenizer's input is data.image_size (one key for the image side).
  k.need(c.data.image_size % (stride * t.patch_size) == 0, "data.image_size",
         f"must be divisible by tokenizer.vae_stride*patch_size={stride * t.patch_size}"
         if latent else f"must be divisible by tokenizer.patch_size={t.patch_size}")
  _autoencoder(k, c)
  k.string("tokenizer.vae_path")
  k.number("tokenizer.scale_factor", 0.0, lo_open=True)
  k.number("tokenizer.pixel_shift")
  k.number("tokenizer.pixel_scale", 0.0, lo_open=True)
  k.boolean("tokenizer.sample_posterior")
  k.boolean("tokenizer.tiny_random")
  k.one_of("tokenizer.dtype", COMPUTE_DTYPES)


def _autoencoder(k: _Checker, c) -> None:
  """tokenizer.ae_* (the small trained autoencoder; checked for every kind, used by one)."""
  t = c.tokenizer
  k.need(isinstance(t.ae_channels, (tuple, list)) and len(t.ae_channels) >= 1
         and all(isinstance(v, int) and v >= 1 for v in t.ae_channels),
         "tokenizer.ae_channels", "must be a non-empty tuple of positive ints")
  k.one_of("tokenizer.ae_model", ("pca", "kl_vae"))   # pretrained.autoencoder.MODELS
  k.integer("tokenizer.ae_patch", 1)
  k.integer("tokenizer.ae_groups", 1)
  k.need(all(v % t.ae_groups == 0 for v in t.ae_channels), "tokenizer.ae_groups",
         "must divide every tokenizer.ae_channels entry")
  k.boolean("tokenizer.ae_attention")
  for name in ("ae_steps", "ae_batch", "ae_train_size"):
    k.integer(f"tokenizer.{name}", 1)
  k.number("tokenizer.ae_lr", 0.0, lo_open=True)
  k.number("tokenizer.ae_kl_weight", 0.0)
  k.number("tokenizer.ae_token_scale", 0.0, lo_open=True)
  k.string("tokenizer.path")
  k.string("tokenizer.cache_dir")
  if t.kind == "autoencoder":
    stride = t.ae_patch * (2 ** (len(t.ae_channels) - 1) if t.ae_model == "kl_vae" else 1)
    k.need(t.vae_stride == stride, "tokenizer.vae_stride",
           f"must be tokenizer.ae_patch (x 2**(len(ae_channels) - 1) for kl_vae) = {stride}")
    if t.ae_model == "pca":
      k.need(t.latent_channels <= 3 * t.ae_patch ** 2, "tokenizer.latent_channels",
             f"must be <= 3 * tokenizer.ae_patch**2 = {3 * t.ae_patch ** 2} for ae_model='pca'")
    k.need(c.data.name == "shapes", "data.name",
           "tokenizer.kind='autoencoder' trains on the shapes data only (use 'vae' otherwise)")


def _text(k: _Checker, c) -> None:
  t = c.text
  k.one_of("text.tokenizer", ("clip_bpe", "word"))
  k.strings("text.word_vocab")
  k.need(all(w.strip() and " " not in w for w in t.word_vocab), "text.word_vocab",
         "words must be non-empty and contain no spaces")
  k.need(len(set(t.word_vocab)) == len(t.word_vocab), "text.word_vocab",
         "must not repeat a word")
  k.integer("text.context_length", MIN_CONTEXT_LENGTH)
  k.integer("text.vocab_size", 1)
  if t.tokenizer == "clip_bpe":
    k.need(t.vocab_size >= 49408, "text.vocab_size", "must be >= 49408 for CLIP BPE ids")
  elif t.word_vocab:
    k.need(t.vocab_size >= len(t.word_vocab) + 4, "text.vocab_size",
           f"must be >= {len(t.word_vocab) + 4}: the word tokenizer's {len(t.word_vocab)} "
           "words + pad, unk, sot, eot")
  elif c.data.name in DATA_SOURCES:   # word_vocab (): the data source's own vocabulary
    k.need(c.data.name in SOURCES_WITH_VOCAB, "text.word_vocab",
           f"is empty, which needs a data source with its own vocabulary "
           f"{SOURCES_WITH_VOCAB}, got data.name={c.data.name!r}")
    if c.data.name == "shapes":
      from configs.common import SHAPES_VOCAB_SIZE   # lazy: common imports this module
      k.need(t.vocab_size >= SHAPES_VOCAB_SIZE, "text.vocab_size",
             f"must be >= {SHAPES_VOCAB_SIZE}: the shapes vocabulary + pad, unk, sot, eot")
  for name in ("width", "layers", "heads", "cond_len", "cond_dim", "small_width",
               "small_layers", "small_heads"):
    k.integer(f"text.{name}", 1)
  k.need(t.width % t.heads == 0, "text.heads", f"must divide text.width={t.width}")
  k.need(t.small_width % t.small_heads == 0, "text.small_heads",
         f"must divide text.small_width={t.small_width}")
  k.number("text.mlp_ratio", 0.0, lo_open=True)
  k.number("text.ln_eps", 0.0, lo_open=True)
  k.number("text.token_init_std", 0.0, lo_open=True)
  k.one_of("text.cond_encoder", ("t5", "minilm", "clip_tower", "small"))
  k.string("text.t5_path")
  k.string("text.minilm_path")
  k.boolean("text.tiny_random")


def _masking(k: _Checker, c) -> None:
  m = c.masking
  k.one_of("masking.kind", ("truncnorm", "uniform", "fixed", "none"))
  k.number("masking.std", 0.0, lo_open=True)
  k.fraction("masking.min")
  k.fraction("masking.max")
  k.need(m.min <= m.max, "masking.max", f"must be >= masking.min={m.min}")
  if m.kind == "truncnorm":
    # The truncated normal needs mass inside [min, max]: a zero-width interval is 'fixed'.
    k.need(m.min < m.max, "masking.max",
           f"must be > masking.min={m.min} for kind='truncnorm' (use kind='fixed')")
  k.fraction("masking.fixed_ratio")
  k.fraction("masking.center_start")
  k.fraction("masking.center_end")
  k.fraction("masking.warmup_start")
  k.fraction("masking.warmup_end")
  k.need(m.warmup_start <= m.warmup_end, "masking.warmup_end",
         f"must be >= masking.warmup_start={m.warmup_start} (fractions of total_steps)")
  k.one_of("masking.shape", ("linear", "cosine"))
  k.integer("masking.group_size", 1)
  k.need(c.batch_size % m.group_size == 0, "batch_size",
         f"must be divisible by masking.group_size={m.group_size}")
  micro = c.batch_size // c.grad_accum_steps
  k.need(micro % m.group_size == 0, "grad_accum_steps",
         f"the micro-batch {micro} must be divisible by masking.group_size={m.group_size} "
         "(gates are per group)")


def _schedule_loss_optim(k: _Checker, c) -> None:
  k.one_of("schedule.kind", ("warmup_constant", "warmup_cosine"))
  k.fraction("schedule.warmup")
  k.fraction("schedule.final_lr_frac")
  for name in ("w_diffusion", "w_contrastive", "w_token_regression"):
    k.number(f"loss.{name}", 0.0)
  k.need(c.loss.w_diffusion > 0 or c.loss.w_contrastive > 0, "loss.w_diffusion",
         "loss.w_diffusion or loss.w_contrastive must be > 0 (nothing to train otherwise)")
  k.fraction("loss.clip_max_mask_ratio")
  k.fraction("loss.diff_min_mask_ratio")
  k.fraction("loss.caption_drop")
  k.number("optim.base_lr", 0.0, lo_open=True)
  k.number("optim.lr", 0.0, lo_open=True, none_ok=True)
  k.fraction("optim.b1", hi_open=True)
  k.fraction("optim.b2", hi_open=True)
  k.number("optim.eps", 0.0, lo_open=True)
  k.number("optim.weight_decay", 0.0)
  k.number("optim.grad_clip", 0.0)
  k.number("optim.head_lr_mult", 0.0, lo_open=True)
  k.one_of("optim.moment_dtype", ("float32", "bfloat16"))
  k.boolean("optim.decay_logit_scale")
  k.boolean("optim.decay_embeddings")
  k.fraction("ema.decay", hi_open=True)
  k.boolean("ema.warmup")


def _data(k: _Checker, c) -> None:
  d = c.data
  k.one_of("data.name", DATA_SOURCES)
  k.integer("data.num_workers", 1)
  k.boolean("data.random_flip")
  for name in ("path", "eval_path", "tfds_name", "train_split", "eval_split", "image_key",
               "caption_key", "captions_file", "cache_dir"):
    k.string(f"data.{name}")
  if d.name in SOURCES_WITH_PATH and k.for_run:
    k.need(bool(d.path.strip()), "data.path", f"must be set for data.name={d.name!r}")
  if d.name == "tfds" and k.for_run:
    k.string("data.tfds_name", non_empty=True)
  k.integer("data.eval_size", 1)
  k.integer("data.shapes_size", 1)
  k.one_of("data.max_objects", (1, 2))
  k.fraction("data.two_object_prob")
  k.fraction("data.max_bad_fraction")


def _sampling(k: _Checker, c) -> None:
  s = c.sampling
  k.integer("sampling.num_steps", 1)
  _spacing(k, "sampling.num_diffusion_steps", c.model.num_train_timesteps)
  k.number("sampling.cfg", 0.0)
  k.one_of("sampling.cfg_schedule", ("linear", "constant"))
  k.number("sampling.temperature", 0.0)
  k.number("sampling.clip_denoised", 0.0, lo_open=True, none_ok=True)
  k.integer("sampling.sad_candidates", 1)
  k.integer("sampling.encoder_buckets", 1)
  k.integer("sampling.head_buckets", 1)
  if s.sad_share is None:
    k.need(s.num_steps >= 2, "sampling.num_steps",
           "must be >= 2 for SAD (select after step T in [1, num_steps - 1])")
    k.integer("sampling.sad_step", 1, s.num_steps - 1)
  else:
    k.fraction("sampling.sad_share", lo_open=True, hi_open=True)
  k.strings("sampling.prompts")
  k.integer("sampling.every", 0)


def _mesh_ckpt(k: _Checker, c) -> None:
  k.need(isinstance(c.mesh.data, int) and not isinstance(c.mesh.data, bool)
         and (c.mesh.data == -1 or c.mesh.data >= 1), "mesh.data",
         "must be -1 (all devices not used by fsdp) or an integer >= 1")
  k.integer("mesh.fsdp", 1)
  rules = c.mesh.param_rules
  k.need(isinstance(rules, (tuple, list)) and len(rules) > 0 and all(
      isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str) for r in rules),
         "mesh.param_rules", "must be a non-empty tuple of (regex, spec) pairs")
  k.integer("ckpt.every", 0)
  k.integer("ckpt.keep", 0)
  k.integer("ckpt.permanent_every", 0)
  k.string("ckpt.init_from")


def _evals(k: _Checker, c) -> None:
  for name, e in c.evals.items():
    key = f"evals.{name}"
    k.need(hasattr(e, "items"), key, "must be a ConfigDict with a 'kind'")
    if "kind" not in e:
      k.fail(key, f"needs a 'kind': one of {EVALUATOR_KINDS}", value=e.to_dict())
    k.one_of(f"{key}.kind", EVALUATOR_KINDS)
    if "every" in e:
      k.integer(f"{key}.every", 0)
    if "at_start" in e:
      k.boolean(f"{key}.at_start")
    if e.kind in ("fidelity", "geneval"):
      k.need(c.data.name == "shapes", f"{key}.kind",
             f"'{e.kind}' needs data.name='shapes' (checkable prompts), got "
             f"data.name={c.data.name!r}")
      if "modes" in e:
        k.need(isinstance(e.modes, (tuple, list)) and len(e.modes) > 0
               and all(m in FIDELITY_MODES for m in e.modes), f"{key}.modes",
               f"must be a non-empty tuple of {FIDELITY_MODES}")
      for sub in ("num_prompts", "batch", "num_candidates"):
        if sub in e and e[sub] is not None:
          k.integer(f"{key}.{sub}", 1)
      if "max_objects" in e:
        k.integer(f"{key}.max_objects", 0)
        k.need(e.max_objects <= c.data.max_objects, f"{key}.max_objects",
               f"must be 0 (the data's) or <= data.max_objects={c.data.max_objects}")
      if "sad_step" in e and e.sad_step is not None:
        k.integer(f"{key}.sad_step", 1, c.sampling.num_steps - 1)
      for sub in ("cfg", "temperature"):
        if sub in e and e[sub] is not None:
          k.number(f"{key}.{sub}", 0.0)
    if e.kind == "heldout" and "diffusion_ratio" in e:
      k.fraction(f"{key}.diffusion_ratio")
