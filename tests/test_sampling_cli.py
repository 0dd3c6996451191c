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
  with pytest.raises(SystemExit, match=r"--sad_step=9: must be an integer in \[1, 3\]"):
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


class _NoSampling:
  """Stands in for the Sampler: reaching it means the inputs were accepted."""

  def __init__(self, *a, **kw):
    raise RuntimeError("sampling started")


@pytest.mark.parametrize("flags,message", [
    (["--prompt="], r"--prompt='' \(prompt 1\): empty prompt"),
    (["--prompt=a", "--prompt=  "], r"--prompt='  ' \(prompt 2\): empty prompt"),
    (["--num_steps=0"], r"--num_steps=0: must be an integer >= 1"),
    (["--num_diffusion_steps=abc"], r"--num_diffusion_steps='abc': a respacing spec"),
    (["--num_diffusion_steps=0"], r"--num_diffusion_steps='0': a respacing spec"),
    (["--temperature=-1"], r"--temperature=-1.0: must be a number >= 0.0"),
    (["--cfg=-5"], r"--cfg=-5.0: must be a number >= 0.0"),
    (["--cfg_schedule=linear", "--mode=sad", "--sad_step=0"], r"--sad_step=0: must be an "
     r"integer in \[1, 3\]"),
    (["--mode=sad", "--num_steps=1"], r"--num_steps=1: must be >= 2 for SAD"),
    (["--mode=sad", "--num_steps=2"], r"--num_steps=2: leaves no room for the run's "
     r"sampling.sad_step=2 \(give --sad_step too\)"),
    (["--num_candidates=1000"], r"--num_candidates=1000: at most 64"),
    (["--mode=plain", "--num_candidates=3"], r"--mode=plain decodes one image per prompt"),
    (["--sad_share=1.5"], r"--sad_share=1.5: must be a number in \(0.0, 1.0\)"),
    (["--strict", "--prompt=a zebra on the moon"],
     r"--strict: prompt 1 .*outside the vocabulary.*\['moon', 'zebra'\]"),
])
def test_bad_inputs_named_before_sampling(flags, message, tmp_path, workdir, loader,
                                          monkeypatch):
  from dream_jax import sampling
  monkeypatch.setattr(sampling, "Sampler", _NoSampling)
  prompt = [] if any(f.startswith("--prompt") for f in flags) else ["--prompt=a red circle"]
  with pytest.raises(SystemExit, match=message):
    cli.main([f"--workdir={workdir}", *prompt, *flags, f"--out={tmp_path / 'o.png'}"],
             loader=loader)


def test_out_paths_checked_first(tmp_path, workdir, loader):
  with pytest.raises(SystemExit, match=r"--out=.*: is a directory"):
    cli.main([f"--workdir={workdir}", "--prompt=a", f"--out={tmp_path}"], loader=loader)
  with pytest.raises(SystemExit, match=r"--out=.*: directory .*missing does not exist"):
    cli.main([f"--workdir={workdir}", "--prompt=a", f"--out={tmp_path / 'missing' / 'o.png'}"],
             loader=loader)


def test_non_numeric_flag_names_the_flag(tmp_path, workdir, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([f"--workdir={workdir}", "--prompt=a", "--num_steps=ten", f"--out={tmp_path}/o"])
  assert e.value.code == 2
  assert "argument --num_steps: invalid int value: 'ten'" in capsys.readouterr().err


def test_prompt_warnings_before_sampling(tmp_path, workdir, loader, monkeypatch, capsys):
  """Unknown words, characters the word tokenizer drops and an over-long prompt are warned
  about (then sampling starts: the stand-in Sampler raises)."""
  from dream_jax import sampling
  monkeypatch.setattr(sampling, "Sampler", _NoSampling)
  long = " ".join(["red"] * 40)
  with pytest.raises(RuntimeError, match="sampling started"):
    cli.main([f"--workdir={workdir}", "--prompt=a zebra circle", "--prompt=un cercle rouge é",
              f"--prompt={long}", f"--out={tmp_path / 'o.png'}"], loader=loader)
  err = capsys.readouterr().err
  assert "prompt 1 ('a zebra circle'): words outside the vocabulary, encoded as <unk>: " \
         "['zebra']" in err
  assert "characters the word tokenizer drops: ['é']" in err
  assert "prompt 3" in err and "40 tokens but the text context holds" in err
