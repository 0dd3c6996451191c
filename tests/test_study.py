"""The study driver (dream_jax/study.py): run commands, resumability, the table and json.

`test_study_plumbing` replaces the training subprocess with a stub that writes a workdir
(seconds); `test_study_real_tiny_runs` (slow) trains two real 2-step variants."""
import json
import os

import numpy as np
import pytest

from dream_jax import study


def _fake_runner(values, calls):
  """A runner that writes what a finished run leaves: metrics.jsonl rows and done.json."""
  def run(cmd, env):
    assert env["JAX_COMPILATION_CACHE_DIR"]
    calls.append(cmd)
    wd = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
    seed = int(next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.seed=")))
    variant = next(a for a in cmd if a.startswith("--config=")).split("recipe=")[1].split(",")[0]
    os.makedirs(wd, exist_ok=True)
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 1, "loss": 1.0, "lr": 1e-3}) + "\n")
      f.write(json.dumps({"step": 2, "loss": 0.5, "lr": 1e-3,
                          "probe_color/top1": values[variant][seed]}) + "\n")
    with open(os.path.join(wd, "done.json"), "w") as f:
      f.write('{"step": 2}\n')
    return 0
  return run


def test_study_plumbing(tmp_path):
  values = {"dream": {0: 0.5, 1: 0.7}, "clip": {0: 0.2, 1: 0.4}}
  calls = []
  argv = ["--budget=2", "--seeds=0,1", "--variants=dream,clip", f"--out={tmp_path}",
          "--", "--config.log_every=1"]
  summary = study.main(argv, runner=_fake_runner(values, calls))
  assert len(calls) == 4
  assert calls[0][-1] == "--config.log_every=1"
  assert any(a.endswith("configs/demo.py:steps=2,recipe=dream,evals=study") for a in calls[0])
  assert any(a.endswith("recipe=clip,evals=study") for a in calls[1])   # seed by seed
  # mean and sample std over seeds, computed here from the stub's values
  for v in ("dream", "clip"):
    vals = np.array(list(values[v].values()))
    s = summary[v]["probe_color/top1"]
    assert s["n"] == 2 and np.isclose(s["mean"], vals.mean())
    assert np.isclose(s["std"], vals.std(ddof=1))
  table = open(tmp_path / "study.md").read().splitlines()
  rows = [line for line in table if line.startswith("| ")]
  assert rows[0].startswith("| variant | n | probe colour |")
  assert len(rows) == 3 and rows[1].startswith("| dream | 2 | 0.600 +- 0.141 |")
  assert "GenEval" not in rows[0]          # no run logged it: the column is left out
  saved = json.load(open(tmp_path / "study.json"))
  assert set(saved["runs"]) == {"dream_seed0", "dream_seed1", "clip_seed0", "clip_seed1"}
  assert os.path.exists(tmp_path / "plots" / "losses.png")
  # Resumable: finished runs are skipped; a run without study.json is trained again.
  os.remove(tmp_path / "runs" / "clip_seed1" / "study.json")
  calls.clear()
  study.main(argv, runner=_fake_runner(values, calls))
  assert len(calls) == 1 and any("clip_seed1" in a for a in calls[0])
  # --report_only: no training; unfinished runs are left out of the table.
  os.remove(tmp_path / "runs" / "dream_seed1" / "done.json")
  calls.clear()
  summary = study.main(argv[:4] + ["--report_only"], runner=_fake_runner(values, calls))
  assert calls == [] and summary["dream"]["probe_color/top1"]["n"] == 1
  assert summary["clip"]["probe_color/top1"]["n"] == 2


def test_study_failed_run_stops(tmp_path):
  with pytest.raises(RuntimeError, match="dream_seed0 failed"):
    study.main(["--budget=1", "--seeds=0", "--variants=dream", f"--out={tmp_path}"],
               runner=lambda cmd, env: 1)


@pytest.mark.slow
def test_study_real_tiny_runs(tmp_path):
  """Two real variants for 2 steps on a tiny model with the demo's light suite (~8 min at
  load 6). Not CLIP-only: it has no geneval entry, so the geneval overrides would not apply."""
  tiny = ["--config.model.width=32", "--config.model.dec_width=32", "--config.model.depth=1",
          "--config.model.dec_depth=1", "--config.model.diff_width=32",
          "--config.model.proj_hidden=32", "--config.text.width=32", "--config.text.layers=1",
          "--config.batch_size=16", "--config.evals.geneval.num_prompts=4",
          "--config.evals.geneval.batch=4", "--config.sampling.num_steps=2",
          "--config.sampling.num_diffusion_steps=2", "--config.sampling.sad_step=1",
          "--config.evals.heldout.every=0",
          f"--config.tokenizer.cache_dir={tmp_path}/cache", "--config.tokenizer.ae_train_size=256"]
  summary = study.main(["--budget=2", "--seeds=0", "--variants=dream,fluid", f"--out={tmp_path}",
                        "--evals=train", "--", *tiny])
  for v in ("dream", "fluid"):
    assert summary[v]["geneval/plain/color_ok"]["n"] == 1
    assert summary[v]["heldout/diffusion_loss@0.9"]["n"] == 1
  assert "retrieval/i2t_r@1" not in summary["dream"]     # the light suite has no retrieval


def test_study_reports_sad_time_relative_to_best_of_k(tmp_path):
  times = {0: (1.0, 4.0), 1: (2.0, 4.0)}       # (SAD s, best-of-K s) per seed

  def run(cmd, env):
    wd = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
    seed = int(next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.seed=")))
    os.makedirs(wd, exist_ok=True)
    sad, bok = times[seed]
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 2, "geneval/sad/seconds": sad,
                          "geneval/best_of_k/seconds": bok}) + "\n")
    with open(os.path.join(wd, "done.json"), "w") as f:
      f.write('{"step": 2}\n')
    return 0

  summary = study.main(["--budget=2", "--seeds=0,1", "--variants=dream", f"--out={tmp_path}"],
                       runner=run)
  ratio = summary["dream"]["study/sad_over_best_of_k_time"]
  assert ratio["n"] == 2 and np.isclose(ratio["mean"], (0.25 + 0.5) / 2)
  assert np.isclose(ratio["std"], np.std([0.25, 0.5], ddof=1))
  table = open(tmp_path / "study.md").read()
  assert "| 1.50 +- 0.71 | 4.00 +- 0.00 | 0.375 +- 0.177 |" in table   # seconds: 2 decimals
