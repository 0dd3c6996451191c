"""`python -m dream_jax.sample`: clear errors, and PNG outputs with a stand-in loader (the
trainer's `load_for_inference` signature) on a tiny random model."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from dream_jax import sample as cli
from tests.helpers import sampling_config as _config

pytestmark = pytest.mark.slow   # slow tier: trains, runs main.py or compiles a sampler


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("run")
  (w / "checkpoints" / "4").mkdir(parents=True)
  (w / "config.json").write_text("{}")
  return str(w)


@pytest.fixture(scope="module")
def loader():
  from dream_jax.train.components import build_model
  c = _config()
  model = build_model(c)
  v = jax.jit(model.init)(jax.random.key(0))
  return lambda workdir, step: (c, model, v, {})


def test_errors(tmp_path, workdir, loader):
  out = str(tmp_path / "o.png")
  with pytest.raises(SystemExit, match="no prompts"):
    cli.main([f"--workdir={workdir}", f"--out={out}"], loader=loader)
  empty = tmp_path / "p.txt"
  empty.write_text("\n  \n")
  with pytest.raises(SystemExit, match="no prompts"):
    cli.main([f"--workdir={workdir}", f"--prompts_file={empty}", f"--out={out}"], loader=loader)
  with pytest.raises(SystemExit, match="K must be >= 1"):
    cli.main([f"--workdir={workdir}", "--prompt=a", "--num_candidates=0", f"--out={out}"],
             loader=loader)
  with pytest.raises(SystemExit, match="no checkpoint"):
    (tmp_path / "config.json").write_text("{}")
    cli.main([f"--workdir={tmp_path}", "--prompt=a", f"--out={out}"], loader=loader)
  with pytest.raises(SystemExit, match="outside the decoding schedule"):
    cli.main([f"--workdir={workdir}", "--prompt=a", "--sad_step=9", f"--out={out}"],
             loader=loader)


def test_sad_with_candidates_figure(tmp_path, workdir, loader):
  out = str(tmp_path / "grid.png")
  s = cli.main([f"--workdir={workdir}", "--prompt=a red circle in the top left",
                "--prompt=a large blue square at the bottom", "--num_candidates=3",
                "--sad_step=2", "--seed=5", "--show_candidates", f"--out={out}"],
               loader=loader)
  assert s["mode"] == "sad" and s["sad_step"] == 2 and len(s["singles"]) == 2
  assert s["winner"] == np.argmax(s["scores"], axis=1).tolist()
  for p in [s["out"], *s["singles"], s["candidates_figure"]]:
    assert os.path.exists(p)
  assert np.asarray(Image.open(s["singles"][0])).shape == (32, 32, 3)
