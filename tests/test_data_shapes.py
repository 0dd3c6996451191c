"""The shapes dataset: determinism, captions vs attributes, the checker, batches."""
import json
import re

import numpy as np
import pytest

from configs.common import base_config, runlocal
from dream_jax.data import shapes as E
from dream_jax.data import make_dataset
from dream_jax.data.pipeline import to_unit_range


def _config(**data):
  c = base_config()
  runlocal(c)
  c.text.cond_encoder = "small"
  c.data.update(num_workers=1, **data)
  return c


def test_deterministic_by_seed_and_index():
  a, b = E.make_example(3, 11, 32), E.make_example(3, 11, 32)
  assert a["caption"] == b["caption"] and np.array_equal(a["image"], b["image"])
  others = [E.make_example(4, 11, 32), E.make_example(3, 12, 32)]
  assert all(not np.array_equal(a["image"], o["image"]) for o in others)


def test_attributes_and_captions_agree():
  words = set(E.VOCAB)
  for i in range(300):
    ex = E.make_example(0, i, 32)
    n = int(ex["num_objects"])
    cap = ex["caption"]
    assert set(re.findall(r"[a-z0-9]+", cap)) <= words
    assert len(cap.split()) <= E.MAX_CAPTION_WORDS
    for key in ("shape", "color", "size", "cell"):
      assert ex[key].shape == (2,) and ex[key].dtype == np.int32
      assert (ex[key][n:] == -1).all() and (ex[key][:n] >= 0).all()
    # Every object is named with its colour and shape, in attribute order.
    names = [f"{E.COLORS[ex['color'][k]]} {E.SHAPES[ex['shape'][k]]}" for k in range(n)]
    positions = [cap.index(nm) for nm in names]
    assert positions == sorted(positions), cap
    if n == 2:
      assert ex["cell"][0] != ex["cell"][1] and ex["color"][0] != ex["color"][1]
    rel = int(ex["relation"])
    if rel >= 0:
      assert E.RELATIONS[rel] in cap and ex["pos_stated"] == 0
      (r0, c0), (r1, c1) = divmod(int(ex["cell"][0]), 3), divmod(int(ex["cell"][1]), 3)
      assert (c0 < c1, c0 > c1, r0 < r1, r0 > r1)[rel]
    else:
      assert ex["pos_stated"] == 1
      assert all(E.CELLS[c] in cap or E._POS_PHRASE[c] in cap for c in ex["cell"][:n])


def _score(images, attrs):
  return E.check_batch(np.stack(images), {k: np.stack([a[k] for a in attrs])
                                          for k in E.ATTR_KEYS}, value_range=(0, 255))


@pytest.mark.parametrize("size", [32, 64])
def test_checker_scores_ground_truth_and_rejects_wrong(size):
  exs = [E.make_example(1, i, size) for i in range(120)]
  images = [e["image"] for e in exs]
  assert _score(images, exs)["all_ok"] == 1.0
  # Slight colour noise (a generator's output is never exact) must not matter.
  rng = np.random.default_rng(0)
  noisy = [np.clip(im + rng.normal(0, 10, im.shape), 0, 255).astype(np.uint8) for im in images]
  assert _score(noisy, exs)["all_ok"] >= 0.97
  # Float images in [-1, 1] (the batch convention) are the default input.
  assert E.check_image(images[0].astype(np.float32) / 127.5 - 1, exs[0])["all_ok"]
  # Wrong attributes (another example's) and random / black images score low.
  wrong = _score(images, exs[1:] + exs[:1])
  assert wrong["all_ok"] <= 0.02 and wrong["color_ok"] <= 0.2 and wrong["cell_ok"] <= 0.2
  rand = _score([rng.integers(0, 256, im.shape, dtype=np.uint8) for im in images], exs)
  assert rand["all_ok"] == 0.0 and rand["color_ok"] <= 0.05
  assert _score([np.zeros_like(im) for im in images], exs)["color_ok"] == 0.0


def test_checker_detects_each_single_attribute_change():
  rng = np.random.default_rng(5)
  for i in range(40):
    ex = E.make_example(2, i, 64)
    for key, n_values in (("shape", 4), ("size", 2), ("cell", 9)):
      attrs = {k: np.array(ex[k]) for k in E.ATTR_KEYS}
      attrs[key][0] = (attrs[key][0] + rng.integers(1, n_values)) % n_values
      if key == "cell" and attrs["num_objects"] == 2 and attrs["cell"][0] == attrs["cell"][1]:
        continue
      res = E.check_image(ex["image"], attrs, value_range=(0, 255))
      assert not res[{"cell": "cell_ok"}.get(key, key + "_ok")], (key, ex["caption"])


def test_prompts():
  held = E.heldout_prompts(6, seed=0)
  src = E.ShapesSource(0, 6, 32, offset=E.HELDOUT_OFFSET)
  assert [c for c, _ in held] == [src[i]["caption"] for i in range(6)]
  rand = E.random_prompts(6, seed=0)
  assert len(rand) == 6 and all(isinstance(c, str) and "num_objects" in a for c, a in rand)
  assert [c for c, _ in rand] != [c for c, _ in held]


def test_make_dataset_shapes_batches_and_state():
  c = _config()
  ds = make_dataset(c, "train", process_index=0, process_count=1)
  it = ds.iterator()
  b = next(it)
  assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
  assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
  assert b["clip_ids"].shape == (8, 16) and b["clip_ids"].dtype == np.int32
  assert b["cond_mask"].dtype == bool and (b["cond_ids"] == b["clip_ids"]).all()
  assert b["attrs_shape"].shape == (8, 2) and b["attrs_num_objects"].shape == (8,)
  assert "caption" not in b and "valid" not in b
  # Ground truth in the batch matches the rendered images.
  img_u8 = np.round((b["image"] + 1) * 127.5).astype(np.uint8)
  assert E.check_batch(img_u8, b, value_range=(0, 255))["all_ok"] == 1.0
  state = json.loads(json.dumps(it.get_state()))
  want = next(it)
  got = next(ds.iterator(start_state=state))
  assert all(np.array_equal(want[k], got[k]) for k in want)
  assert ds.info["text_vocab_size"] == len(E.VOCAB) + 4


def test_shapes_eval_split_is_heldout_and_padded():
  c = _config(eval_size=13)
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  batches = list(ev.iterator())
  assert [len(b["valid"]) for b in batches] == [8, 8]
  assert sum(int(b["valid"].sum()) for b in batches) == 13
  again = list(ev.iterator())
  assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(batches, again))
  tr = E.ShapesSource(c.seed, c.data.shapes_size, 32)
  train_caps = {tr[i]["caption"] + str(tr[i]["image"].sum()) for i in range(64)}
  held = E.ShapesSource(c.seed, 13, 32, offset=E.HELDOUT_OFFSET)
  assert not train_caps & {held[i]["caption"] + str(held[i]["image"].sum()) for i in range(13)}
  assert E.HELDOUT_OFFSET > c.data.shapes_size


def test_shapes_hosts_disjoint_and_cover():
  c = _config(shapes_size=24)
  c.batch_size = 4
  seen = []
  for host in range(2):
    it = make_dataset(c, "train", process_index=host, process_count=2).iterator()
    imgs = np.concatenate([next(it)["image"] for _ in range(6)])   # one local epoch (12)
    seen.append({im.tobytes() for im in imgs})
    assert len(seen[-1]) == 12
  assert not seen[0] & seen[1]
  whole = E.ShapesSource(c.seed, 24, 32)
  assert seen[0] | seen[1] == {to_unit_range(whole[i]["image"]).tobytes() for i in range(24)}


def test_configs_know_the_shapes_vocabulary_size():
  """configs import nothing of dream_jax, so they state the word tokenizer's id count."""
  from configs import common
  from dream_jax.tokenizers.word import WordTokenizer
  assert WordTokenizer(E.VOCAB, 16).vocab_size == common.SHAPES_VOCAB_SIZE
