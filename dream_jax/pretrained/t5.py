"""T5 encoder (Hugging Face `T5EncoderModel`) in Flax Linen, with its tokenizer.

Architecture (transformers 5.x `T5Stack`, encoder side), for T5 v1.0 and v1.1:
  ids -> shared embedding (no scaling) -> N blocks -> final RMS norm.
  block: x + SelfAttention(RMSNorm(x)); x + FF(RMSNorm(x)).
  RMS norm: x * rsqrt(mean(x^2) + eps) * weight, statistics in float32, no mean, no bias.
  attention: q/k/v/o without bias, `num_heads * d_kv` inner width (need not equal d_model),
    NO 1/sqrt(d) scaling (T5 folds it into the init), plus a learned relative-position bias
    [num_buckets, heads] that only the FIRST block owns and every block reuses; padded keys get
    the dtype minimum added (HF's additive mask).
  FF: v1.0 `relu`: wo(relu(wi x)); v1.1 `gated-gelu`: wo(gelu_new(wi_0 x) * wi_1 x), where HF's
    `gelu_new` is the tanh approximation (matched here on purpose).
Output: last_hidden_state [B, L, d_model] float32. Pads are not zeroed (as in HF); use the mask.

Module names mirror HF (`encoder/block_0/layer_0/SelfAttention/relative_attention_bias`), so
`model.safetensors` maps onto the params mechanically.

Tokenizer (`T5Tokenizer`): `tokenizer.json` through the `tokenizers` package (HF fast
tokenizer: pieces, then `</s>` id 1; truncation keeps `</s>`), else `spiece.model` through the
optional `sentencepiece` package, else -- only when asked for, for tiny random stand-ins --
a ByT5-style byte tokenizer (pad 0, eos 1, unk 2, byte b -> b + 3; vocabulary 259).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.pretrained import loading

Dtype = Any


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128
  d_model: int = 1024
  d_kv: int = 64
  d_ff: int = 4096
  num_layers: int = 24
  num_heads: int = 16
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"   # 'relu' (v1.0) | 'gated-gelu' (v1.1) | 'gelu' | ...

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def act_name(self) -> str:
    act = self.feed_forward_proj.split("-")[-1]
    return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

  @classmethod
  def from_hf(cls, cfg: dict) -> "T5Config":
    names = [f.name for f in dataclasses.fields(cls)]
    kw = {k: cfg[k] for k in names if k in cfg}
    return cls(**kw)

  def to_hf(self) -> dict:
    d = dataclasses.asdict(self)
    d.update(model_type="t5", architectures=["T5EncoderModel"])
    return d


# google-t5/t5-large (v1.0, the paper's condition encoder): encoder 335M params.
T5_LARGE_CONFIG = T5Config()
# runlocal stand-in: v1.1 style (gated-gelu), heads*d_kv != d_model, byte vocabulary.
def tiny_t5_config(d_model: int = 32) -> T5Config:
  return T5Config(vocab_size=259, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                  num_heads=2, feed_forward_proj="gated-gelu")


def _activation(name: str):
  if name == "relu":
    return jax.nn.relu
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("silu", "swish"):
    return jax.nn.silu
  raise ValueError(f"unsupported T5 activation {name!r}")


def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128):
  """HF/Mesh-TF bucketing of (key - query) offsets into [0, num_buckets) int32."""
  buckets = 0
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
    relative_position = jnp.abs(relative_position)
  else:
    relative_position = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  # float32 log as in torch; the clamp avoids log(0) on the (unused) small branch.
  rel = jnp.maximum(relative_position, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(rel / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, relative_position, large)


class RMSNorm(nn.Module):
  """T5LayerNorm: [..., D] -> [..., D]; float32 statistics."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (w * y).astype(self.dtype)


class SelfAttention(nn.Module):
  config: T5Config
  has_relative_bias: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias):
    cfg = self.config
    b, l, _ = x.shape
    dense = lambda f, n: nn.Dense(f, use_bias=False, dtype=self.dtype,
                                  param_dtype=jnp.float32, name=n)
    inner = cfg.num_heads * cfg.d_kv
    split = lambda t: t.reshape(b, l, cfg.num_heads, cfg.d_kv)
    q, k, v = (split(dense(inner, n)(x)) for n in ("q", "k", "v"))
    if self.has_relative_bias:
      pos = jnp.arange(l)
      buckets = relative_position_bucket(pos[None, :] - pos[:, None], True,
                                         cfg.relative_attention_num_buckets,
                                         cfg.relative_attention_max_distance)
      table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads,
                       param_dtype=jnp.float32, name="relative_attention_bias")
      position_bias = jnp.transpose(table(buckets), (2, 0, 1))[None]  # [1, H, Lq, Lk]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    logits = logits + position_bias + mask_bias
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, inner)
    return dense(cfg.d_model, "o")(y), position_bias


class FeedForward(nn.Module):
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda f, n: nn.Dense(f, use_bias=False, dtype=self.dtype,
                                  param_dtype=jnp.float32, name=n)
    act = _activation(cfg.act_name)
    if cfg.is_gated:
      h = act(dense(cfg.d_ff, "wi_0")(x)) * dense(cfg.d_ff, "wi_1")(x)
    else:
      h = act(dense(cfg.d_ff, "wi")(x))
    return dense(cfg.d_model, "wo")(h)


class AttentionLayer(nn.Module):
  config: T5Config
  has_relative_bias: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias):
    h = RMSNorm(self.config.layer_norm_epsilon, self.dtype, name="layer_norm")(x)
    h, position_bias = SelfAttention(self.config, self.has_relative_bias, self.dtype,
                                     name="SelfAttention")(h, mask_bias, position_bias)
    return x + h, position_bias


class FeedForwardLayer(nn.Module):
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = RMSNorm(self.config.layer_norm_epsilon, self.dtype, name="layer_norm")(x)
    return x + FeedForward(self.config, self.dtype, name="DenseReluDense")(h)


class Block(nn.Module):
  config: T5Config
  has_relative_bias: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias):
    x, position_bias = AttentionLayer(self.config, self.has_relative_bias, self.dtype,
                                      name="layer_0")(x, mask_bias, position_bias)
    return FeedForwardLayer(self.config, self.dtype, name="layer_1")(x), position_bias


class Stack(nn.Module):
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias):
    position_bias = None
    for i in range(self.config.num_layers):
      x, position_bias = Block(self.config, i == 0, self.dtype, name=f"block_{i}")(
          x, mask_bias, position_bias)
    return RMSNorm(self.config.layer_norm_epsilon, self.dtype, name="final_layer_norm")(x)


class T5Encoder(nn.Module):
  """ids [B,L] int32, mask [B,L] bool -> last_hidden_state [B,L,d_model] float32."""
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask):
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.d_model, param_dtype=jnp.float32, name="shared")(ids)
    mask_bias = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
    x = Stack(cfg, self.dtype, name="encoder")(x.astype(self.dtype), mask_bias)
    return x.astype(jnp.float32)


# ----------------------------------------------------------------------------- weights
T5_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
T5_HINT = ("Use a local Hugging Face directory of the T5 checkpoint (config.json, "
           "model.safetensors or pytorch_model.bin, and tokenizer.json or spiece.model), e.g. "
           "'google-t5/t5-large' fetched on a machine with network access "
           "(`huggingface-cli download google-t5/t5-large --local-dir DIR`), or a directory "
           "written by `python -m dream_jax.tools.convert_weights --kind=t5`.")
# Keys of full T5 checkpoints that the encoder does not use.
_T5_IGNORE = (r"decoder\..*", r"lm_head\..*", r"encoder\.embed_tokens\.weight")


def load_hf_state(path: str) -> dict[str, np.ndarray]:
  """A weights file, or a sharded checkpoint's `*.index.json` (reads every shard)."""
  if path.endswith(".index.json"):
    index = loading.read_json(path)
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
      state.update(loading.load_state_dict(os.path.join(os.path.dirname(path), shard)))
    return state
  return loading.load_state_dict(path)


def t5_param_shapes(cfg: T5Config):
  ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 4), jnp.bool_)
  return jax.eval_shape(lambda i, m: T5Encoder(cfg).init(jax.random.key(0), i, m),
                        ids, mask)["params"]


def convert_t5_state(state, cfg: T5Config) -> dict:
  """HF T5 / T5EncoderModel state dict -> Flax encoder params (float32 numpy)."""
  state = dict(state)
  if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
    state["shared.weight"] = state.pop("encoder.embed_tokens.weight")
  return loading.torch_to_flax(state, t5_param_shapes(cfg), ignore=_T5_IGNORE)


def read_t5_dir(directory: str, config_key: str = "config.text.t5_path"):
  """(T5Config, params) from a HF directory or a converted one (params.msgpack)."""
  cfg_path = loading.find_weights_file(directory, ("config.json",), what="T5 config",
                                       hint=T5_HINT, config_key=config_key)
  cfg = T5Config.from_hf(loading.read_json(cfg_path))
  if loading.is_converted_dir(directory):
    return cfg, loading.load_converted_params(directory)
  weights = loading.find_weights_file(directory, T5_WEIGHT_FILES, what="T5 weights",
                                      hint=T5_HINT, config_key=config_key)
  return cfg, convert_t5_state(load_hf_state(weights), cfg)


# --------------------------------------------------------------------------- tokenizer
class T5Tokenizer:
  """texts -> (ids [B, max_length] int32, mask [B, max_length] bool); pad 0, `</s>` 1 kept.

  `T5Tokenizer.from_dir(d)` reads `tokenizer.json` (tokenizers package) or `spiece.model`
  (sentencepiece package, optional). `T5Tokenizer.bytes()` is the ByT5-style byte fallback.
  """

  pad_id, eos_id = 0, 1

  def __init__(self, max_length: int, encode_fn, vocab_size: int, kind: str):
    self.max_length = int(max_length)
    self._encode_fn = encode_fn  # str -> list[int] WITHOUT eos
    self.vocab_size = vocab_size
    self.kind = kind

  @classmethod
  def from_dir(cls, directory: str, max_length: int = 128) -> "T5Tokenizer":
    tj = os.path.join(directory, "tokenizer.json")
    if os.path.exists(tj):
      from tokenizers import Tokenizer
      tok = Tokenizer.from_file(tj)
      tok.no_padding()
      tok.no_truncation()
      eos = tok.token_to_id("</s>")
      def encode(text):
        ids = tok.encode(text, add_special_tokens=True).ids
        # The T5 post-processor appends </s>; strip it so truncation can re-append it.
        return ids[:-1] if ids and ids[-1] == eos else ids
      return cls(max_length, encode, tok.get_vocab_size(), "tokenizer.json")
    sp_path = os.path.join(directory, "spiece.model")
    if os.path.exists(sp_path):
      try:
        import sentencepiece
      except ImportError as e:
        raise ImportError(f"{sp_path} needs the `sentencepiece` package; or put the "
                          "checkpoint's tokenizer.json in the directory instead") from e
      sp = sentencepiece.SentencePieceProcessor(model_file=sp_path)
      return cls(max_length, lambda t: list(sp.encode(t)), sp.get_piece_size(), "spiece")
    raise FileNotFoundError(
        f"T5 tokenizer: neither tokenizer.json nor spiece.model in {directory!r}. {T5_HINT}")

  @classmethod
  def bytes(cls, max_length: int = 128) -> "T5Tokenizer":
    return cls(max_length, lambda t: [b + 3 for b in t.encode("utf-8")], 259, "bytes")

  def __call__(self, texts: Sequence[str]):
    if isinstance(texts, str):
      raise TypeError("pass a list of strings")
    ids = np.zeros((len(texts), self.max_length), np.int32)
    mask = np.zeros(ids.shape, bool)
    for row, text in enumerate(texts):
      toks = list(self._encode_fn(text))[: self.max_length - 1] + [self.eos_id]
      ids[row, : len(toks)] = toks
      mask[row, : len(toks)] = True
    return ids, mask
