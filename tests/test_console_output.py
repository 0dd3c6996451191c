"""Plots, progress/ETA, the final summary, one-line errors and image helpers (host only,
no model: each test runs in well under a second, the CLI ones in a few seconds)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dream_jax import plot
from dream_jax.train import metrics as metrics_lib
from dream_jax.train import summary
from dream_jax.utils import console
from dream_jax.utils import images as im

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _write_metrics(workdir, steps=40, evals=True, keys=("loss", "lr", "mask_center")):
  os.makedirs(workdir, exist_ok=True)
  rng = np.random.default_rng(0)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for s in range(0, steps + 1, 5):
      row = {"step": s}
      if s:
        row.update({k: float(rng.uniform(0.1, 1)) for k in keys})
        row.update(mask_ratio=float(rng.uniform(0, 1)), steps_per_sec=2.0,
                   share_diffusion=0.5, loss_diffusion="nan")   # NaN is logged as a string
      if evals and s % 20 == 0:
        row.update({"heldout/r1_i2t": s / 100, "heldout/seconds": 1.5,
                    "heldout/r1_chance": 0.004})
      f.write(json.dumps(row) + "\n")
    f.write('{"step": 41, "loss": 0.')   # a line cut by a kill mid-write is skipped


def test_plot_one_workdir_writes_every_figure_with_data(tmp_path):
  w = str(tmp_path / "dream")
  _write_metrics(w)
  paths = plot.plot_workdirs([w])
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(f"{n}.png" for n in plot.FIGURES)
  for p in paths:
    assert os.path.dirname(p) == os.path.join(w, "plots")
    assert os.path.getsize(p) > 1000
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_overlays_workdirs_and_skips_missing_keys(tmp_path):
  a, b = str(tmp_path / "dream"), str(tmp_path / "clip")
  _write_metrics(a)
  # The second run has no lr / mask keys and no evaluator rows.
  _write_metrics(b, evals=False, keys=("loss",))
  out = str(tmp_path / "cmp")
  paths = plot.main(["--workdir", a, b, "--out", out])
  assert {os.path.basename(p) for p in paths} == {f"{n}.png" for n in plot.FIGURES}
  # A run whose metrics have none of a figure's keys: that figure is not written.
  c = str(tmp_path / "bare")
  os.makedirs(c)
  with open(os.path.join(c, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n")
  assert [os.path.basename(p) for p in plot.plot_workdirs([c])] == ["losses.png"]
  with pytest.raises(SystemExit, match="no such file"):
    plot.main(["--workdir", str(tmp_path / "nope")])


def test_series_keeps_last_value_of_replayed_steps():
  rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 1.5},
          {"step": 3, "loss": "nan"}]
  s, v = plot.series(rows, "loss")
  assert s.tolist() == [1, 2, 3] and v[:2].tolist() == [3.0, 1.5] and np.isnan(v[2])


def test_eta_leaves_out_first_step_and_paused_time(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: clock[0])
  p = metrics_lib.Progress(total_steps=100, batch_size=8)
  clock[0] += 30.0                     # the first step: 30 s of compilation
  r = p.rates(1)
  assert np.isnan(r["eta_sec"]) and p.first_step_sec == 30.0
  assert "first step 30s (compilation)" in p.line(1, r)
  clock[0] += 24 * 0.5                 # steps 2..25 at 0.5 s
  with p.paused():
    clock[0] += 40.0                   # an evaluation: not step time
  r = p.rates(25)
  assert r["steps_per_sec"] == pytest.approx(2.0)
  assert r["eta_sec"] == pytest.approx(75 * 0.5)
  assert "ETA 38s" in p.line(25, r)


def test_eval_line_shows_headline_metrics_and_time():
  row = {"heldout/r1_i2t": 0.3, "heldout/r1_chance": 0.004, "heldout/num_examples": 256.0,
         "heldout/seconds": 2.0, "fidelity/plain/color_ok": 0.4,
         "fidelity/real/color_ok": 1.0, "fidelity/seconds": 70.0}
  line = metrics_lib.Progress.eval_line(100, row)
  assert line == ("eval step 100: heldout r1_i2t 0.3 (2s) | "
                  "fidelity plain/color_ok 0.4 (1m10s)")


def test_summary_names_files_and_headline_metrics(tmp_path):
  w = str(tmp_path / "run")
  _write_metrics(w)
  os.makedirs(os.path.join(w, "checkpoints", "40"))
  os.makedirs(os.path.join(w, "samples"))
  im.save_png(np.zeros((4, 4, 3), np.uint8), os.path.join(w, "samples", "step_000040.png"))
  out = summary.lines(w, wall_sec=125.0)
  text = "\n".join(out)
  assert out[0] == "done: 40 steps in 2m05s"
  assert "heldout r1_i2t 0.4 (2s)  [step 40]" in text
  assert os.path.join(w, "checkpoints", "40") in text
  assert os.path.join(w, "samples", "step_000040.png") in text
  assert os.path.join(w, "metrics.jsonl") in text
  assert "plots        (none)" in text
  assert len(out) <= 12
  done = metrics_lib.Progress(total_steps=40, batch_size=8, first_step=40)
  assert summary.lines(w, done, wall_sec=3.0)[0] == (
      "already complete: 40 steps (nothing left to train)")


def test_one_line_errors():
  e = ValueError("config.masking.std: must be > 0\nsecond line")
  assert console.one_line(e) == "error: config.masking.std: must be > 0; second line"


@pytest.mark.parametrize("override,expect", [
    ("--config.no_such_key=1", "error: --config.no_such_key: no such config key"),
    ("--config.model.widht=1", 'Did you mean "width"'),
    ("--config.total_steps=0", "error: config.total_steps=0: must be an integer >= 1"),
])
def test_main_config_errors_are_one_line(override, expect):
  """Errors before any jax work: no traceback, the key named, exit status 2."""
  r = subprocess.run([sys.executable, "main.py", "--config=configs/demo.py",
                      "--workdir=/nonexistent/never_written", override],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr
  lines = [x for x in r.stderr.splitlines() if x.strip()]
  assert len(lines) == 1 and expect in lines[0], r.stderr
  assert "Traceback" not in r.stderr
  if "widht" in override:
    assert "config.model has: " in lines[0] and "width" in lines[0]


def test_captioned_grid_and_undecoded_marking():
  imgs = np.full((3, 8, 8, 3), 10, np.uint8)
  g = im.captioned_grid(imgs, ["a large red circle in the top left", "b", "c"], ncol=3)
  assert g.dtype == np.uint8 and g.shape[1] == 3 * (8 * 16 + 4) + 4   # 8 px -> x16
  with pytest.raises(ValueError, match="3 images but 2 captions"):
    im.captioned_grid(imgs, ["a", "b"])
  tokens = np.ones((3, 4, 5))          # 2x2 tokens of 4x4 px
  tokens[0, 1] = 0                     # one undecoded token
  und = im.undecoded_tokens(tokens)
  assert und.tolist() == [[False, True, False, False]] + [[False] * 4] * 2
  marked = im.mark_undecoded(imgs, und)
  changed = np.any(marked != imgs, axis=-1)
  assert changed[0, :4, 4:].all() and changed.sum() == 16   # exactly token 1's patch


def test_unknown_prompt_words_are_reported_or_refused(capsys):
  from configs import demo
  from dream_jax import sample as cli
  from dream_jax.data import text_tokenizer
  c = demo.get_config()
  tok = text_tokenizer(c)
  bad = "a large magenta zebra"
  notes = cli.check_prompt_tokens([bad, "a large red circle in the top left"], tok,
                                  strict=False)
  assert len(notes) == 1 and "['magenta', 'zebra']" in notes[0]
  assert "outside the vocabulary" in capsys.readouterr().err
  with pytest.raises(SystemExit, match="outside the vocabulary"):
    cli.check_prompt_tokens([bad], tok, strict=True)
  assert "circle" in cli.vocabulary(c) and "zebra" not in cli.vocabulary(c)
