"""The text-tokenizer interface every caption tokenizer implements.

A tokenizer turns a list of strings into a fixed-length int32 id matrix. The CLIP text
tower pools at the FIRST position holding `eot_id` (the official code takes the argmax of the
ids, which only works when the end-of-text id is the largest id; pooling at the first `eot_id`
works for any tokenizer and gives the same position for CLIP's BPE).

Implementations: `word.WordTokenizer` (tiny configs, fixed vocabulary),
`clip_bpe.ClipBpeTokenizer` (OpenAI CLIP / open_clip ids). Frozen generation-condition
encoders (T5, MiniLM) bring their own tokenizers under `dream_jax/pretrained/`.
"""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np


class TextTokenizer(abc.ABC):
  """Strings -> ids [B, context_length] int32, padded with `pad_id`, end token kept."""

  context_length: int
  vocab_size: int
  sot_id: int
  eot_id: int
  pad_id: int = 0

  @abc.abstractmethod
  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Returns ids [len(texts), context_length] int32.

    Truncation keeps the end-of-text token as the last slot, so pooling always finds it.
    """

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    return self.encode(texts)

  def padding_mask(self, ids: np.ndarray) -> np.ndarray:
    """[B, L] bool, True for real tokens (start .. end-of-text inclusive)."""
    ids = np.asarray(ids)
    eot_pos = first_eot_position(ids, self.eot_id)
    return np.arange(ids.shape[-1])[None, :] <= eot_pos[:, None]


def first_eot_position(ids, eot_id: int):
  """Index of the first `eot_id` per row ([B] int); the last slot when a row has none.

  Works for numpy and jax arrays alike (only uses argmax/any/where).
  """
  is_eot = ids == eot_id
  xp = np if isinstance(ids, np.ndarray) else __import__("jax.numpy", fromlist=["numpy"])
  pos = xp.argmax(is_eot, axis=-1)
  return xp.where(is_eot.any(axis=-1), pos, ids.shape[-1] - 1)
