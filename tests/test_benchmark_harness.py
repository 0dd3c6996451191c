"""The side-by-side benchmark harness (benchmarks/official): its pure parts, the CPU shims,
the official shapes against our configs, and (with torch) the official-subprocess path run on
a fake "official" package that this test writes itself (the real official code is never in
the repository)."""
import importlib
import os
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.official import shapes as S  # noqa: E402
from benchmarks.official import shims, timing  # noqa: E402


def test_schedule_alternates_and_flips_order():
  assert timing.schedule(3, ("official", "ours")) == [
      (0, "official"), (0, "ours"), (1, "ours"), (1, "official"), (2, "official"), (2, "ours")]
  assert timing.schedule(1, ("ours",)) == [(0, "ours")]
  with pytest.raises(ValueError):
    timing.schedule(0, ("ours",))


def test_alternate_runs_each_side_per_round_in_schedule_order():
  calls = []

  def fake(name, base):
    def run(n):
      calls.append((name, n))
      return [base + len(calls) + i / 10 for i in range(n)]
    return run

  times = timing.alternate(dict(a=fake("a", 0), b=fake("b", 100)), rounds=3, reps=2)
  assert calls == [("a", 2), ("b", 2), ("b", 2), ("a", 2), ("a", 2), ("b", 2)]
  assert times["a"] == [1, 1.1, 4, 4.1, 5, 5.1]
  assert times["b"] == [102, 102.1, 103, 103.1, 106, 106.1]
  with pytest.raises(RuntimeError):
    timing.alternate(dict(a=lambda n: [1.0]), rounds=1, reps=2)


def test_summary_and_ratio_lines_from_fake_timings():
  ours = timing.summarize([1.0, 3.0, 2.0, 1.5])
  assert ours == dict(median=1.75, min=1.0, max=3.0, n=4)
  off = timing.summarize([3.5, 4.0, 3.0])
  line = timing.ratio_line("[anchor] train", ours, off)
  assert line == ("[anchor] train: ours 1.750 s [1.000-3.000] (n=4) | official 3.500 s "
                  "[3.000-4.000] (n=3) | ours/official 0.500x (faster)")
  slow = timing.ratio_line("x", timing.summarize([2.0]), timing.summarize([1.0]))
  assert slow.endswith("ours/official 2.000x (slower)")
  alone = timing.ratio_line("[b16] plain", ours, None)
  assert alone.startswith("[b16] plain: ours 1.750 s") and timing.NO_RATIO in alone
  assert "official" not in alone.split(";")[0]
  with pytest.raises(ValueError):
    timing.summarize([])


def test_stub_package_and_misc_shim():
  name = "harness_test_vision_stub"
  shims.stub_package(name)
  tf = importlib.import_module(name + ".transforms.functional")
  mode = tf.InterpolationMode.BILINEAR
  assert {mode: "bilinear"}[mode] == "bilinear"          # hashable, usable as a dict key

  class Sub(importlib.import_module(name + ".transforms").RandomResizedCrop):
    pass
  assert Sub is not None
  util = shims.misc_module()
  assert util.misc.is_dist_avail_and_initialized() is False and util.misc.get_rank() == 0


def test_official_shapes_match_our_benchmark_configs():
  from benchmarks import train_step
  for shapes in ("anchor", "b16"):
    c, m, t = train_step.config_for(shapes), S.MODELS[shapes], S.TEXT[shapes]
    assert (m["encoder_embed_dim"], m["encoder_depth"], m["encoder_num_heads"]) == (
        c.model.width, c.model.depth, c.model.heads)
    assert (m["decoder_embed_dim"], m["decoder_depth"], m["decoder_num_heads"]) == (
        c.model.dec_width, c.model.dec_depth, c.model.dec_heads)
    assert (m["buffer_size"], m["diffloss_d"], m["diffloss_w"], m["text_aligner_depth"]) == (
        c.model.buffer_size, c.model.diff_depth, c.model.diff_width, c.model.aligner_depth)
    assert (m["diffusion_batch_mul"], m["ssl_mlp_dim"], m["embed_dim"]) == (
        c.model.diffusion_batch_mul, c.model.proj_hidden, c.model.embed_dim)
    assert (m["img_size"], m["text_max_len"], m["t5_embed_dim"]) == (
        c.data.image_size, c.text.cond_len, c.text.cond_dim)
    assert (t["width"], t["layers"], t["heads"], t["context_length"], t["vocab_size"]) == (
        c.text.width, c.text.layers, c.text.heads, c.text.context_length, c.text.vocab_size)
    assert S.TRAIN[shapes] == dict(batch=c.batch_size, mask_ratio=c.masking.fixed_ratio)
    assert c.model.attn_dropout == m["attn_dropout"] == 0.1
    assert c.optim.grad_clip == S.OPTIM["grad_clip"]
    assert c.model.remat == "none"                     # the official step recomputes nothing


FAKE_DREAM = '''
import torch
import torchvision.transforms as transforms          # resolved by the harness's stub
from torchvision.transforms.functional import InterpolationMode
import util.misc as misc                              # resolved by the harness's shim

_MODES = {InterpolationMode.BILINEAR: "bilinear"}


class DREAM(torch.nn.Module):
  """Not the official model: a stand-in with its constructor and method signatures."""

  def __init__(self, text_cfg, norm_layer, **kw):
    super().__init__()
    assert kw["encoder_embed_dim"] == 256 and text_cfg.width == 256
    assert not misc.is_dist_avail_and_initialized()
    self.lin = torch.nn.Linear(16, 1)
    self.seen = []

  def forward(self, imgs, text, labels, t5):
    assert imgs.shape == (32, 4, 16, 16) and t5.shape == (32, 32, 1024), (imgs.shape, t5.shape)
    assert self.mask_ratio_generator.rvs(0) == (0.5, 0.0)
    x = imgs.reshape(32, 4, 256).mean(-1).repeat(1, 4)
    loss = self.lin(x).pow(2).mean()
    return loss, loss * 0, None, {}

  def sample_tokens(self, bsz, num_iter, cfg, cfg_schedule, text_embedding, temperature):
    assert text_embedding.shape == (2 * bsz, 32, 1024) and num_iter == 16
    print("official code printing to stdout")
    return torch.randn(bsz, 4, 16, 16).cuda()

  def sample_tokens_with_clip_critic_once(self, text, num_candidates, clip_critic_threshold, **kw):
    assert text.shape == (kw["bsz"], 77) and (num_candidates, clip_critic_threshold) == (4, 4)
    return self.sample_tokens(**kw)
'''

FAKE_LAYERS = '''
from dataclasses import dataclass


@dataclass
class CLIPTextCfg:
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
'''


def test_official_subprocess_on_a_fake_package(tmp_path):
  pytest.importorskip("torch")
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / "dream.py").write_text(textwrap.dedent(FAKE_DREAM))
  (tmp_path / "models" / "layers.py").write_text(textwrap.dedent(FAKE_LAYERS))
  with timing.OfficialProcess(str(tmp_path), "anchor", ("train", "plain", "sad")) as proc:
    assert proc.ready["ready"] and set(proc.ready["warmup_s"]) == {"train", "plain", "sad"}
    times = timing.alternate(dict(train=proc.runner("train"), sad=proc.runner("sad")), 2, 2)
    assert [len(v) for v in times.values()] == [4, 4]
    assert all(x > 0 for v in times.values() for x in v)
    assert len(proc.run("plain", 3)["cpu"]) == 3 and len(proc.cpu["sad"]) == 4
  assert proc.proc.returncode == 0


def test_run_all_commands():
  from benchmarks import run_all
  cmds = run_all.commands("all", "/o", "/t", 2)
  assert [c[1].rsplit("/", 1)[1] for c in cmds] == ["train_step.py", "sampling.py"] * 2
  assert [c[2] for c in cmds] == ["--shapes=anchor"] * 2 + ["--shapes=b16"] * 2
  assert all("--official=/o" in c and "--official_pythonpath=/t" in c for c in cmds)
  assert not any("--official" in " ".join(c) for c in run_all.commands("anchor", "", "", 1))


def test_cpu_line():
  assert timing.cpu_line([1.0, 2.0, 3.0], [4.0]) == (
      "CPU per repetition: ours 2.000 s, official 4.000 s, ours/official 0.500x")
  assert timing.cpu_line([1.0], []) == "CPU per repetition: ours 1.000 s"
