"""OpenAI CLIP's byte-level BPE tokenizer (the ids of open_clip's `SimpleTokenizer`).

A numpy port of `open_clip/tokenizer.py` (itself copied from openai/CLIP, MIT licence):
text is cleaned (ftfy `fix_text`, double HTML unescape, whitespace collapsed, lower-cased),
split by CLIP's regex (`\\p{L}` classes need the `regex` package), mapped to byte-level
unicode and merged with the 48,894 BPE merges, giving a 49,408-id vocabulary:
256 bytes, 256 bytes + '</w>', the merges, then `<start_of_text>` 49406 and
`<end_of_text>` 49407. Rows are `[sot, tokens..., eot, 0, 0, ...]`; a caption longer than the
context is truncated and its last slot overwritten with `eot` (open_clip's behaviour), so
pooling at the first end-of-text token always finds it.

The merges file `bpe_simple_vocab_16e6.txt.gz` is read from the installed `open_clip_torch`
wheel (installed with `pip install --no-deps`, see requirements-nodeps.txt). The file is
located through package metadata WITHOUT importing `open_clip` (its `tokenizer.py` imports
torch at module level). It is never vendored and never downloaded.
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.metadata
import importlib.util
import os
from typing import Sequence

import numpy as np
import regex

from dream_jax.tokenizers.base import TextTokenizer

_VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP (the file has a header line and more)
SOT_TOKEN, EOT_TOKEN = "<start_of_text>", "<end_of_text>"


def default_bpe_path() -> str:
  """Path of `bpe_simple_vocab_16e6.txt.gz` inside the installed open_clip_torch package.

  Looks it up through `importlib.metadata` (falling back to `importlib.util.find_spec`,
  which locates a package without executing it). Raises FileNotFoundError with the install
  line when the package is missing.
  """
  try:
    dist = importlib.metadata.distribution("open_clip_torch")
    path = str(dist.locate_file(_VOCAB_MEMBER))
    if os.path.exists(path):
      return path
  except importlib.metadata.PackageNotFoundError:
    pass
  spec = importlib.util.find_spec("open_clip")  # finds, does not import
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(root, os.path.basename(_VOCAB_MEMBER))
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f"CLIP BPE vocabulary {_VOCAB_MEMBER!r} not found. It ships inside the open_clip_torch "
      "wheel: `pip install --no-deps open_clip_torch==3.3.0` (see requirements-nodeps.txt; "
      "--no-deps avoids pulling torch), or pass bpe_path= to ClipBpeTokenizer.")


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP reversible byte -> printable unicode character table (256 entries)."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, [chr(c) for c in cs]))


def _fix_text(text: str) -> str:
  try:
    import ftfy  # optional: open_clip always applies it; without it exotic mojibake differs
  except ImportError:  # pragma: no cover - ftfy is pinned in requirements.txt
    return text
  return ftfy.fix_text(text)


def clean_text(text: str) -> str:
  """open_clip's default 'lower' cleaning: ftfy, double HTML unescape, whitespace, lower."""
  text = html.unescape(html.unescape(_fix_text(text))).strip()
  return " ".join(text.split()).strip().lower()


class ClipBpeTokenizer(TextTokenizer):
  """CLIP BPE: `encode(texts) -> [B, context_length] int32` (sot 49406, eot 49407, pad 0)."""

  pad_id = 0

  def __init__(self, context_length: int = 77, bpe_path: str | None = None):
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    self.context_length = int(context_length)
    self.bpe_path = bpe_path or default_bpe_path()
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
    with gzip.open(self.bpe_path) as f:
      lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
    vocab = list(self.byte_encoder.values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [SOT_TOKEN, EOT_TOKEN]
    self.encoder = {tok: i for i, tok in enumerate(vocab)}
    self.decoder = {i: tok for tok, i in self.encoder.items()}
    self.bpe_ranks = {m: i for i, m in enumerate(merges)}
    self._cache = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
    self._pat = regex.compile(
        SOT_TOKEN + "|" + EOT_TOKEN
        + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE)
    self.vocab_size = len(self.encoder)  # 49408
    self.sot_id = self.encoder[SOT_TOKEN]  # 49406
    self.eot_id = self.encoder[EOT_TOKEN]  # 49407

  def bpe(self, token: str) -> str:
    """Applies the merges to one pre-token; returns space-separated sub-tokens."""
    if token in self._cache:
      return self._cache[token]
    word = tuple(token[:-1]) + (token[-1] + "</w>",)
    while len(word) > 1:
      pairs = set(zip(word[:-1], word[1:]))
      bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
      if bigram not in self.bpe_ranks:
        break
      first, second = bigram
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = tuple(merged)
    out = " ".join(word)
    self._cache[token] = out
    return out

  def encode_text(self, text: str) -> list[int]:
    """Ids of one caption without start/end tokens and without truncation."""
    ids = []
    for token in self._pat.findall(clean_text(text)):
      token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
      ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
    return ids

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("encode() takes a list of strings, not a string")
    out = np.zeros((len(texts), self.context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.sot_id] + self.encode_text(text) + [self.eot_id]
      if len(ids) > self.context_length:
        ids = ids[: self.context_length]
        ids[-1] = self.eot_id
      out[row, : len(ids)] = ids
    return out

  def decode(self, ids) -> str:
    """Text of one id row: everything after the first end-of-text (the padding) is dropped.

    Id 0 is the byte '!' in CLIP's vocabulary, so padding is recognised by position only.
    """
    toks = []
    for i in (int(i) for i in ids):
      if i == self.eot_id:
        break
      if i != self.sot_id:
        toks.append(self.decoder[i])
    text = "".join(toks)
    return (bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
            .replace("</w>", " ").strip())
