"""Corrupt and hostile data: skipped, counted by reason (exactly, per record consumed), in the
metrics, the console summary and `data.inspect_source`; the run stops only past
data.max_bad_fraction; a truncated tar's lost records are counted."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from dream_jax.data import make_dataset
from dream_jax.data.pipeline import TooManyBadRecords

VOCAB = ("photo", "number") + tuple(str(k) for k in range(300))
PERIOD = 20
# Position in each period of 20 keys -> fault (5% of the records each); the others are good
# (some in modes that are converted: CMYK, palette, 16-bit, alpha). Bad positions are never
# adjacent, so each bad record is met once per epoch (a skip falls back to the next record).
FAULTS = {1: "truncated", 3: "empty_image", 5: "undecodable", 7: "too_large",
          9: "bad_caption_encoding", 11: "empty_caption", 13: "missing_caption",
          15: "missing_image", 17: "bad_json"}
KEYS = range(210)   # 10 keys without an image -> 200 records = 25 batches of 8 = one epoch
STEPS = 25
CAPTION = "a large red circle"     # in the shapes vocabulary of the tiny run
BIG = 64            # too_large images are BIG x BIG with PIL's limit lowered to 40 x 40


def _encode(img, fmt):
  buf = io.BytesIO()
  img.save(buf, fmt)
  return buf.getvalue()


def _members(k: int, caption: str = "photo number {k}") -> dict:
  img = Image.new("RGB", (24, 20), (k * 37 % 200 + 20, k * 91 % 200 + 20, 60))
  jpg, cap = _encode(img, "JPEG"), caption.format(k=k).encode()
  fault = FAULTS.get(k % PERIOD)
  if fault == "truncated":
    return {"jpg": jpg[: len(jpg) // 2], "txt": cap}
  if fault == "empty_image":
    return {"jpg": b"", "txt": cap}
  if fault == "undecodable":
    return {"jpg": bytes(range(256)) * 2, "txt": cap}
  if fault == "too_large":
    return {"png": _encode(Image.new("RGB", (BIG, BIG)), "PNG"), "txt": cap}
  if fault == "bad_caption_encoding":
    return {"jpg": jpg, "txt": b"photo \xff\xfe number"}
  if fault == "empty_caption":
    return {"jpg": jpg, "txt": b"  \n "}
  if fault == "missing_caption":
    return {"jpg": jpg}
  if fault == "missing_image":
    return {"txt": cap}
  if fault == "bad_json":
    return {"jpg": jpg, "json": b"{not json"}
  mode = {2: "CMYK", 4: "P", 6: "I;16", 8: "RGBA", 10: "LA"}.get(k % PERIOD)
  if mode == "CMYK":
    return {"jpg": _encode(img.convert("CMYK"), "JPEG"), "txt": cap}
  if mode == "I;16":
    arr = np.asarray(img.convert("L"), np.uint16) * 257
    return {"png": _encode(Image.fromarray(arr), "PNG"), "txt": cap}
  if mode:
    return {"png": _encode(img.convert(mode), "PNG"), "txt": cap}
  return {"jpg": jpg, "txt": cap}


def _tar(keys, **kw) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for k in keys:
      for ext, data in _members(k, **kw).items():
        info = tarfile.TarInfo(f"{k:06d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _config(path, *, numbered=True, **data):
  """The tiny run on a tar (batch 8); numbered: a vocabulary where caption 'photo number K'
  names its record (data-only tests), else the run's own (its compiled shapes)."""
  from tests.test_workdir import tiny
  c = tiny(STEPS)
  c.evals = c.evals.__class__()
  c.sampling.prompts = ()
  c.log_every = STEPS
  if numbered:
    c.text.update(tokenizer="word", word_vocab=VOCAB, vocab_size=len(VOCAB) + 4)
  else:   # the shapes vocabulary, given explicitly (a wds source has none of its own)
    from dream_jax.data.shapes import VOCAB as SHAPES
    c.text.word_vocab = tuple(SHAPES)
  c.data.update(name="wds", path=path, num_workers=2)
  c.data.update(**dict(dict(max_bad_fraction=0.5), **data))
  return c


def _expected(keys) -> dict:
  out = {}
  for k in keys:
    f = FAULTS.get(k % PERIOD)
    if f:
      out[f] = out.get(f, 0) + 1
  return out


@pytest.fixture
def small_pil_limit(monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)


def test_corrupt_run_completes_and_counts_equal_injected(tmp_path, small_pil_limit, capsys):
  """210 keys, 9 faults x 10-11 (~5% each): a 25-step run (one epoch of the 200 records
  with an image) completes; its last metrics row, the console summary and data.inspect_source give
  the injected counts by reason."""
  import jax
  from dream_jax.data.inspect_source import inspect_pipeline
  from dream_jax.train.metrics import read_metrics
  from dream_jax.train.trainer import train
  (tmp_path / "000.tar").write_bytes(_tar(KEYS, caption=CAPTION))
  c = _config(str(tmp_path / "000.tar"), numbered=False)
  expected = _expected(KEYS)
  assert sum(expected.values()) == 95 and set(expected.values()) == {10, 11}
  train(c, str(tmp_path / "w"), devices=jax.devices()[:1])
  row = [r for r in read_metrics(str(tmp_path / "w")) if "loss" in r][-1]
  got = {k.split("/")[1]: int(v) for k, v in row.items() if k.startswith("data_skipped/")}
  assert row["step"] == STEPS and got == expected
  out = capsys.readouterr().out
  assert "data: skipped records by reason" in out and "too_large 11" in out
  report = inspect_pipeline(c, num_batches=STEPS)
  assert report["examples"] == 200 and report["skipped"] == expected


def test_too_many_bad_records_stop_with_a_clear_error(tmp_path, small_pil_limit):
  (tmp_path / "000.tar").write_bytes(_tar(KEYS))
  c = _config(str(tmp_path / "000.tar"), max_bad_fraction=0.2)
  it = make_dataset(c, "train", process_index=0, process_count=1).iterator()
  with pytest.raises(TooManyBadRecords, match=r"records read could not be used \(\d+\.\d% > "
                                              r"data.max_bad_fraction=0.2\); by reason"):
    for _ in range(STEPS):
      next(it)


def test_skip_counts_survive_a_checkpoint_of_the_iterator(tmp_path, small_pil_limit):
  (tmp_path / "000.tar").write_bytes(_tar(KEYS))
  c = _config(str(tmp_path / "000.tar"))
  ds = make_dataset(c, "train", process_index=0, process_count=1)
  it = ds.iterator()
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  it2 = make_dataset(c, "train", process_index=0, process_count=1).iterator(state)
  for _ in range(STEPS - 7):
    a, b = next(it), next(it2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
  assert it.skip_counts() == it2.skip_counts() == _expected(KEYS)


def _key_of(name):
  return int(os.path.basename(name).partition(".")[0])


def test_truncated_tar_lost_records_are_counted(tmp_path):
  """A 50-record shard cut to 60% with img2dataset's _stats.json: every one of the 50 is
  either read or counted (records after the cut as 'lost_in_truncated_shard')."""
  good_keys = [k for k in range(300) if k % PERIOD in (0, 2, 4, 6, 8, 10, 12, 14, 16, 18)][:50]
  data = _tar(good_keys)
  cut = int(len(data) * 0.6)
  (tmp_path / "000.tar").write_bytes(data[:cut])
  (tmp_path / "000_stats.json").write_text(json.dumps({"count": 50, "successes": 50}))
  # Independent expectation from the intact tar's layout: a key whose first header does not
  # fit before the cut left nothing; one whose data runs past it is read but unusable.
  with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    members = tar.getmembers()
  first_header = {}
  last_end = {}
  for m in members:
    k = _key_of(m.name)
    first_header.setdefault(k, m.offset)
    last_end[k] = m.offset_data + m.size
  lost = sum(1 for k in good_keys if first_header[k] + 512 > cut)
  intact = sum(1 for k in good_keys if last_end[k] <= cut)
  assert 0 < lost < 50 and intact + lost < 50     # the cut lands inside a record
  c = _config(str(tmp_path / "000.tar"), eval_size=50)
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  ids = set()
  for b in ev.iterator():
    ids |= set((b["clip_ids"][b["valid"], 3] - 6).tolist())
  counts = ev.skip_counts()
  assert counts["lost_in_truncated_shard"] == lost and counts["truncated_shards"] == 1
  assert len(ids) == intact
  read_bad = sum(v for k, v in counts.items()
                 if k not in ("lost_in_truncated_shard", "truncated_shards"))
  assert intact + read_bad + lost == 50


def test_folder_with_a_bad_byte_missing_pairs_and_bad_rows(tmp_path):
  """captions.csv with a non-UTF-8 caption, a row naming a missing file and an image no row
  names: the source opens, each is counted, the good rows are read."""
  for k in range(6):
    Image.new("RGB", (20, 20), (40 * k, 10, 10)).save(tmp_path / f"{k}.png")
  rows = [b"file,caption", b"0.png,photo number 0", b"1.png,photo \xff number 1",
          b"2.png,photo number 2", b"gone.png,photo number 3", b"4.png,photo number 4"]
  (tmp_path / "captions.csv").write_bytes(b"\n".join(rows) + b"\n")   # 3, 5.png: no row
  c = _config(str(tmp_path), eval_size=5)
  c.data.name = "folder"
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  batches = list(ev.iterator())
  assert ev.skip_counts() == {"bad_caption_encoding": 1, "missing_image": 1,
                              "missing_caption": 2}
  assert sum(int(b["valid"].sum()) for b in batches) == 5
