"""End to end: the trainer runs config.evals entries (step 0 and the end) through the new
interface; `python -m dream_jax.evaluate` on the finished run reloads the EMA weights,
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


def test_trainer_evals_then_standalone_evaluate(tmp_path, capsys):
  from dream_jax.train.trainer import train
  from tests.test_train import tiny_config
  c = tiny_config(total_steps=2)
  small = ev_configs.shapes_data("color", train_size=16, test_size=8)
  c.evals = common.ConfigDict()
  c.evals.heldout = ev_configs.heldout(every=0)
  c.evals.probe = ev_configs.linear_probe(every=0, at_start=False, data=small, epochs=1,
                                          warmup_epochs=0, batch_size=8, feature_batch=8)
  row = train(c, str(tmp_path), devices=jax.devices()[:1])
  assert "probe/ridge_top1" in row and "heldout/r1_i2t" in row
  steps = [r["step"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))
           if "heldout/r1_i2t" in r]
  assert steps == [0, 2]        # at_start and the end
  capsys.readouterr()
  evaluate.main([f"--workdir={tmp_path}", "--evals=probe", "--config.evals.probe.ridge=0.5",
                 "--config.evals.probe.epochs=0"])
  printed = capsys.readouterr().out
  assert "probe" in printed and "ridge_top1" in printed and "heldout" not in printed
  out = json.load(open(tmp_path / "eval" / "2.json"))
  assert set(out["results"]) == {"probe"} and "top1" not in out["results"]["probe"]
  assert out["evals"]["probe"]["ridge"] == 0.5
  last = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])
  assert last["step"] == 2 and last["probe/ridge_top1"] == out["results"]["probe"]["ridge_top1"]
  with pytest.raises(KeyError, match="no_such_key"):
    evaluate.main([f"--workdir={tmp_path}", "--evals=probe", "--config.evals.probe.no_such_key=1"])


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
  """A fake TFDS dataset built on the fly in array_record format, read like imagenet2012."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class FakeLabelled(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(dict(
          image=tfds.features.Image(shape=(12, 12, 3)),
          label=tfds.features.ClassLabel(names=["dark", "bright"]))))

    def _split_generators(self, dl_manager):
      return {"train": self._gen(8), "test": self._gen(4)}

    def _gen(self, n):
      for i in range(n):
        yield i, dict(image=np.full((12, 12, 3), 250 * (i % 2), np.uint8), label=i % 2)

  FakeLabelled(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  c = common.base_config()
  c.data.image_size = 8
  spec = ev_configs.data_spec("tfds", "label", name="fake_labelled", path=str(tmp_path),
                              train_size=0, test_size=0)
  tr = datasets.load_split(spec, c, "train")
  te = datasets.load_split(spec, c, "test")
  assert len(tr) == 8 and len(te) == 4 and tr.class_names == ("dark", "bright")
  bright = tr.images.reshape(8, -1).mean(1) > 0
  np.testing.assert_array_equal(bright, tr.labels == 1)
  # The probe on these features (pixels) separates the classes.
  from dream_jax.evaluators import probe
  out = probe.probe_scores(tr.images.reshape(8, -1), tr.labels, te.images.reshape(4, -1),
                           te.labels, 2, ridge=1e-3, epochs=0)
  assert out["ridge_top1"] == 1.0
