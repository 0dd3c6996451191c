"""Caption tokenizers for the CLIP text tower; `get_text_tokenizer(config.text)` picks one.

`clip_bpe`: OpenAI CLIP / open_clip ids (vocab read from the installed open_clip_torch wheel).
`word`: a fixed-vocabulary word tokenizer for tiny configs (no file needed).
"""
from __future__ import annotations

import functools

from dream_jax.tokenizers.base import TextTokenizer, first_eot_position
from dream_jax.tokenizers.word import WordTokenizer

__all__ = ["TextTokenizer", "WordTokenizer", "ClipBpeTokenizer", "first_eot_position",
           "get_text_tokenizer"]


@functools.lru_cache(maxsize=8)
def _clip_bpe(context_length: int):
  # Loading the 49k merges takes ~0.2 s; share one instance per context length.
  from dream_jax.tokenizers.clip_bpe import ClipBpeTokenizer
  return ClipBpeTokenizer(context_length=context_length)


def get_text_tokenizer(text_cfg) -> TextTokenizer:
  """Builds the caption tokenizer from `config.text`.

  Reads `text_cfg.tokenizer` ('clip_bpe' | 'word'), `text_cfg.context_length` and, for
  'word', `text_cfg.word_vocab` (a sequence of words). Errors name the offending key.
  """
  kind = text_cfg.tokenizer
  context_length = int(text_cfg.context_length)
  if kind == "clip_bpe":
    return _clip_bpe(context_length)
  if kind == "word":
    vocab = tuple(text_cfg.word_vocab)
    if not vocab:
      raise ValueError("config.text.word_vocab is empty; the 'word' tokenizer needs a "
                       "vocabulary (the data module usually provides one)")
    return WordTokenizer(vocab, context_length=context_length)
  raise ValueError(f"config.text.tokenizer must be 'clip_bpe' or 'word', got {kind!r}")


def __getattr__(name):
  if name == "ClipBpeTokenizer":
    from dream_jax.tokenizers.clip_bpe import ClipBpeTokenizer
    return ClipBpeTokenizer
  raise AttributeError(name)
