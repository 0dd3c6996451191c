"""End to end: `python -m dream_jax.evaluate` on a run directory reloads the EMA weights,
applies --config.evals overrides and --evals, prints the table, writes W/eval/<step>.json and
appends metrics.jsonl rows; labelled data from an image folder and a fake TFDS dataset."""
import json
import os

import jax
import numpy as np
import pytest

from configs import common, evaluators as ev_configs
from dream_jax import evaluate
from dream_jax.evaluators import datasets


def test_standalone_evaluate_on_a_checkpoint(tmp_path, capsys):
  """A run directory as the trainer leaves it (config.json + a checkpoint; written here from
  the initial state so no training step has to compile; the trainer's own evaluation path is
  exercised by tests/test_train.py::test_paper_runlocal_trains_two_steps)."""
  from dream_jax.train import checkpoint as ckpt_lib
  from dream_jax.train.trainer import Trainer
  from dream_jax.train.workdir import write_config
  from tests.test_train import tiny_config
  c = tiny_config(total_steps=2)
  small = ev_configs.shapes_data("color", train_size=16, test_size=8)
  c.evals = common.ConfigDict()
  c.evals.heldout = ev_configs.heldout(every=0)
  c.evals.probe = ev_configs.linear_probe(every=0, at_start=False, data=small, epochs=1,
                                          warmup_epochs=0, batch_size=8, feature_batch=8)
  tr = Trainer(c, devices=jax.devices()[:1])
  write_config(c, str(tmp_path))
  ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=1, permanent_every=0)
  ck.save(3, tr.fresh_state(), {})
  ck.close()
  capsys.readouterr()
  evaluate.main([f"--workdir={tmp_path}", "--evals=probe", "--config.evals.probe.ridge=0.5",
                 "--config.evals.probe.epochs=0"])
  printed = capsys.readouterr().out
  assert "probe" in printed and "ridge_top1" in printed and "heldout" not in printed
  out = json.load(open(tmp_path / "eval" / "3.json"))
  assert set(out["results"]) == {"probe"} and "top1" not in out["results"]["probe"]
  assert out["evals"]["probe"]["ridge"] == 0.5
  last = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])
  assert last["step"] == 3 and last["probe/ridge_top1"] == out["results"]["probe"]["ridge_top1"]
  with pytest.raises(KeyError, match="no_such_key"):
    evaluate.main([f"--workdir={tmp_path}", "--evals=probe",
                   "--config.evals.probe.no_such_key=1"])


def _png(path, color):
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((20, 24, 3), color, np.uint8)).save(path)


def test_folder_source_one_folder_per_class(tmp_path):
  for k, color in enumerate(((255, 0, 0), (0, 0, 255))):
    for i in range(5):
      _png(str(tmp_path / f"class{k}" / f"{i}.png"), color)
  c = common.base_config()
  c.data.image_size = 16
  spec = ev_configs.data_spec("folder", "label", path=str(tmp_path), train_size=0, test_size=0,
                              test_frac=0.4)
  tr, te = (datasets.load_split(spec, c, s) for s in ("train", "test"))
  assert (len(tr), len(te)) == (6, 4) and tr.class_names == ("class0", "class1")
  assert tr.images.shape == (6, 16, 16, 3) and sorted(te.labels.tolist()) == [0, 0, 1, 1]
  np.testing.assert_allclose(te.images[te.labels == 1][..., 2], 1.0)   # blue class


def test_tfds_array_record_source(tmp_path):
  """A fake TFDS dataset built on the fly in array_record format, read like imagenet2012
  (Tensor image features: encoding tfds.features.Image would need TensorFlow)."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class FakeLabelled(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(dict(
          image=tfds.features.Tensor(shape=(12, 12, 3), dtype=np.uint8),
          label=tfds.features.ClassLabel(names=["dark", "bright"]))))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(8), "test": self._generate_examples(4)}

    def _generate_examples(self, n):
      for i in range(n):
        img = np.zeros((12, 12, 3), np.uint8)
        img[:, :6] = 250 * (i % 2)          # bright left half for class 1
        yield i, dict(image=img, label=i % 2)

  FakeLabelled(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  c = common.base_config()
  c.data.image_size = 8
  spec = ev_configs.data_spec("tfds", "label", name="fake_labelled", path=str(tmp_path),
                              train_size=0, test_size=0)
  tr = datasets.load_split(spec, c, "train")
  te = datasets.load_split(spec, c, "test")
  assert len(tr) == 8 and len(te) == 4 and tr.class_names == ("dark", "bright")
  bright = tr.images.reshape(8, -1).mean(1) > -0.5    # black is -1
  np.testing.assert_array_equal(bright, tr.labels == 1)
  # The probe on these features (pixels) separates the classes.
  from dream_jax.evaluators import probe
  out = probe.probe_scores(tr.images.reshape(8, -1), tr.labels, te.images.reshape(4, -1),
                           te.labels, 2, ridge=1e-3, epochs=0)
  assert out["ridge_top1"] == 1.0


def test_tfds_dense_targets(tmp_path):
  """A fake per-pixel dataset (image + segmentation mask) as ADE20K / NYU entries read it."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class FakeDense(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(dict(
          image=tfds.features.Tensor(shape=(16, 16, 3), dtype=np.uint8),
          annotation=tfds.features.Tensor(shape=(16, 16, 1), dtype=np.uint8))))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(3), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        m = np.zeros((16, 16, 1), np.uint8)
        m[:, 8:] = 1 + i % 2
        yield i, dict(image=np.repeat(m * 100, 3, -1).astype(np.uint8), annotation=m)

  FakeDense(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  c = common.base_config()
  c.data.image_size = 8
  spec = ev_configs.ade20k_data(path=str(tmp_path), name="fake_dense", test_split="test")
  tr = datasets.load_split(spec, c, "train")
  assert tr.labels.shape == (3, 8, 8) and tr.labels.dtype == np.int32
  np.testing.assert_array_equal(tr.labels[1, :, :4], 0)
  np.testing.assert_array_equal(tr.labels[1, :, 4:], 2)
