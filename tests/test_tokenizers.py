"""Caption tokenizers: CLIP BPE ids equal open_clip's, truncation, the config factory.

The expected ids below were produced once by open_clip_torch 3.3.0's own
`open_clip/tokenizer.py` (`tokenize([text])`, context 77), executed with torch 2.13.0 CPU
installed; only the non-zero prefix of each row is stored (the rest is padding 0).
"""
import ml_collections
import numpy as np
import pytest

from dream_jax.tokenizers import WordTokenizer, first_eot_position, get_text_tokenizer

OPEN_CLIP_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "A Red CIRCLE above a blue square.":
        [49406, 320, 736, 7117, 4348, 320, 1746, 3999, 269, 49407],
    "Tom &amp; Jerry's  café — naïve résumé!":
        [49406, 2435, 261, 9164, 568, 15304, 2005, 1097, 35689, 563, 29106, 7054, 4166, 256,
         49407],
    "日本語のテキスト 123 😀":
        [49406, 39121, 44353, 34002, 252, 21575, 2429, 228, 47121, 32421, 486, 272, 273, 274,
         7334, 49407],
    "": [49406, 49407],
    "don't stop-believing; it's 2024's best":
        [49406, 847, 713, 1691, 268, 19551, 282, 585, 568, 273, 271, 273, 275, 568, 949, 49407],
    "   spaces\tand\nnewlines   ": [49406, 9006, 537, 1218, 3418, 49407],
    # 100 words: truncated to 77 with the end token in the last slot.
    " ".join(["word"] * 100): [49406] + [2653] * 75 + [49407],
}


@pytest.fixture(scope="module")
def clip_tok():
  from dream_jax.tokenizers.clip_bpe import ClipBpeTokenizer
  return ClipBpeTokenizer(context_length=77)


def test_clip_bpe_ids_equal_open_clip(clip_tok):
  texts = list(OPEN_CLIP_IDS)
  ids = clip_tok.encode(texts)
  assert ids.shape == (len(texts), 77) and ids.dtype == np.int32
  for row, text in zip(ids, texts):
    expected = np.zeros(77, np.int32)
    expected[: len(OPEN_CLIP_IDS[text])] = OPEN_CLIP_IDS[text]
    np.testing.assert_array_equal(row, expected, err_msg=repr(text))


def test_clip_bpe_specials_and_truncation(clip_tok):
  assert (clip_tok.sot_id, clip_tok.eot_id, clip_tok.vocab_size) == (49406, 49407, 49408)
  assert clip_tok.context_length == 77
  ids = clip_tok.encode(["x " * 200, "a cat"])
  assert ids[0, -1] == clip_tok.eot_id and (ids[0] != 0).all()
  np.testing.assert_array_equal(first_eot_position(ids, clip_tok.eot_id), [76, 3])
  mask = clip_tok.padding_mask(ids)
  assert mask[1].sum() == 4 and mask[0].all()
  assert clip_tok.decode(ids[1]) == "a cat"
  short = get_text_tokenizer(ml_collections.ConfigDict(
      dict(tokenizer="clip_bpe", context_length=5, word_vocab=())))
  np.testing.assert_array_equal(short.encode(["a photo of a cat"])[0],
                                [49406, 320, 1125, 539, 49407])
  with pytest.raises(TypeError):
    clip_tok.encode("a string")


def test_vocab_file_located_without_importing_open_clip():
  """Locating the merges file must never execute open_clip (whose tokenizer imports torch)."""
  import sys
  from dream_jax.tokenizers.clip_bpe import default_bpe_path
  had_open_clip = "open_clip" in sys.modules
  path = default_bpe_path()
  assert path.endswith("bpe_simple_vocab_16e6.txt.gz")
  assert had_open_clip or "open_clip" not in sys.modules


def test_factory_word_and_errors():
  cfg = ml_collections.ConfigDict(dict(tokenizer="word", context_length=8,
                                       word_vocab=("red", "circle")))
  tok = get_text_tokenizer(cfg)
  assert isinstance(tok, WordTokenizer)
  np.testing.assert_array_equal(tok.encode(["a red circle"])[0], [2, 1, 4, 5, 3, 0, 0, 0])
  cfg.word_vocab = ()
  with pytest.raises(ValueError, match="word_vocab"):
    get_text_tokenizer(cfg)
  cfg.tokenizer = "nope"
  with pytest.raises(ValueError, match="config.text.tokenizer"):
    get_text_tokenizer(cfg)


def test_factory_reads_common_config():
  from configs.common import base_config
  c = base_config()
  tok = get_text_tokenizer(c.text)
  assert tok.eot_id == 49407 and tok.encode(["hi"]).shape == (1, c.text.context_length)
