"""A word-level tokenizer with a fixed vocabulary, for tiny configs and the shapes data.

Ids: 0 pad, 1 unknown word, 2 start-of-text, 3 end-of-text, then the vocabulary in the given
order. Text is lower-cased and split into words (runs of letters/digits); punctuation is
dropped. Deterministic and dependency-free, so a CPU demo needs no vocabulary file.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from dream_jax.tokenizers.base import TextTokenizer

_WORD = re.compile(r"[a-z0-9]+")
_SPECIALS = ("<pad>", "<unk>", "<sot>", "<eot>")


class WordTokenizer(TextTokenizer):
  """Fixed-vocabulary word tokenizer: `encode(texts) -> [B, context_length] int32`."""

  pad_id, unk_id, sot_id, eot_id = 0, 1, 2, 3

  def __init__(self, vocab: Sequence[str], context_length: int = 77):
    words = [w.lower() for w in vocab]
    if len(set(words)) != len(words):
      raise ValueError("WordTokenizer vocab has duplicate words")
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    self.vocab = tuple(words)
    self.context_length = int(context_length)
    self._index = {w: i + len(_SPECIALS) for i, w in enumerate(words)}
    self.vocab_size = len(words) + len(_SPECIALS)

  def words(self, text: str) -> list[str]:
    return _WORD.findall(text.lower())

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("encode() takes a list of strings, not a string")
    out = np.full((len(texts), self.context_length), self.pad_id, np.int32)
    for row, text in enumerate(texts):
      ids = [self._index.get(w, self.unk_id) for w in self.words(text)]
      ids = [self.sot_id] + ids[: self.context_length - 2] + [self.eot_id]
      out[row, : len(ids)] = ids
    return out

  def decode(self, ids) -> str:
    inv = {i: w for w, i in self._index.items()}
    return " ".join(inv[int(i)] for i in ids if int(i) in inv)
