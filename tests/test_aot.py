"""dream_jax.tools.aot: analytic FLOPs recomputed from the model's own parameter shapes,
the HLO collective counter, and (only where libtpu is installed) a real TPU compile of a
tiny config. CI has no libtpu: the compile test is skipped there with the reason."""
import importlib.util

import jax
import numpy as np
import pytest

from configs import dream_b16
from dream_jax.tools import aot
from dream_jax.train.components import build_model


def kernel_params(tree, prefix):
  """Sum of the sizes of the Dense kernels under `prefix` (one block)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[0] == prefix and keys[-1] == "kernel":
      total += int(np.prod(leaf.shape))
  return total


def test_analytic_flops_match_the_parameter_shapes():
  c = dream_b16.get_config()
  c.model.scan_layers = False    # per-block parameter names (the count is the same)
  shapes = jax.eval_shape(build_model(c).init, jax.random.key(0))["params"]
  b, m = c.batch_size, c.model
  # Encoder: per extra token, 2 FLOPs per kernel weight of every block, + attention.
  blk = kernel_params(shapes, "encoder_blocks_0")
  assert blk == 4 * m.width ** 2 + 2 * m.width * 4 * m.width   # qkv, proj, fc1, fc2
  a, e = 200, 100
  t_a, t_e = m.buffer_size + a, m.buffer_size + e
  want = 3 * b * m.depth * (2 * (a - e) * blk + 4 * (t_a ** 2 - t_e ** 2) * m.width)
  got = aot.analytic_flops(c, a, 0) - aot.analytic_flops(c, e, 0)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # Diffusion head: 2 FLOPs per kernel weight per row.
  head = kernel_params(shapes, "diffloss")
  got = aot.analytic_flops(c, a, 10) - aot.analytic_flops(c, a, 0)
  np.testing.assert_allclose(got, 3 * b * 10 * 2 * head, rtol=1e-12)


def test_remat_recompute_flops_by_policy():
  """'full' recomputes every block's forward (a third of the 3x count), 'dots' only the
  attention products, 'none' nothing: checked on the encoder tokens' share, from the
  parameter shapes as above."""
  c = dream_b16.get_config()
  c.model.scan_layers = False
  shapes = jax.eval_shape(build_model(c).init, jax.random.key(0))["params"]
  b, m = c.batch_size, c.model
  blk = kernel_params(shapes, "encoder_blocks_0")
  a, e = 200, 100
  t_a, t_e = m.buffer_size + a, m.buffer_size + e
  attn = b * m.depth * 4 * (t_a ** 2 - t_e ** 2) * m.width
  want = {"full": b * m.depth * 2 * (a - e) * blk + attn, "dots": attn, "none": 0}
  for policy, w in want.items():
    c.model.remat = policy
    np.testing.assert_allclose(aot.remat_flops(c, a) - aot.remat_flops(c, e), w, rtol=1e-12)
  c.model.remat = "full"
  r = aot.flop_report(c, 0.5)
  np.testing.assert_allclose(r["analytic_executed"] - r["analytic_compiled"],
                             aot.remat_flops(c, 256))


def test_flop_report_waste_is_the_top_bucket_over_the_useful_work():
  c = dream_b16.get_config()
  r = aot.flop_report(c, 0.5)
  np.testing.assert_allclose(r["analytic_compiled"], aot.analytic_flops(c, 256, 256 * 4))
  np.testing.assert_allclose(r["analytic_useful"], aot.analytic_flops(c, 128, 128 * 4))
  assert r["bucket_waste"] == pytest.approx(r["analytic_compiled"] / r["analytic_useful"] - 1)


def test_hlo_flops_counts_loop_bodies_once_and_the_top_branch():
  """The facts the FLOP report rests on, on a toy module: XLA's HloCostAnalysis counts a
  scan body once (hence `unrolled_flops`) and a switch's most expensive branch (hence the
  top-bucket comparison); unrolled, every layer counts."""
  x, w = jax.numpy.zeros((8, 64)), jax.numpy.zeros((5, 64, 64))
  one = 2 * 8 * 64 * 64
  scan = lambda x, w: jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)[0]
  def unrolled(x, w):
    for i in range(5):
      x = x @ w[i]
    return x
  switch = lambda i, x, w: jax.lax.switch(i, [lambda x: x @ w[0], lambda x: x @ w[0] @ w[1]], x)
  assert aot.hlo_flops(jax.jit(scan).lower(x, w)) == pytest.approx(one, abs=8)
  assert aot.hlo_flops(jax.jit(unrolled).lower(x, w)) == pytest.approx(5 * one, abs=8)
  assert aot.hlo_flops(jax.jit(switch).lower(0, x, w)) == pytest.approx(2 * one, abs=8)


@pytest.mark.slow
def test_unrolled_flops_count_every_layer_of_a_scanned_step():
  """A scanned tiny train step (4 encoder, 3 decoder layers): the unrolled count is the
  unscanned program's, and well above the scanned module's (each stack's body once)."""
  from tests.helpers import train_config
  kw = {"model.remat": "full", "model.depth": 4, "model.dec_depth": 3}
  c = train_config(**kw, **{"model.scan_layers": True})
  devices = jax.devices()[:1]
  unrolled = aot.unrolled_flops(c, devices)
  c2 = train_config(**kw, **{"model.scan_layers": False})
  assert unrolled == aot.hlo_flops(aot.lower_train(c2, devices)[0])
  assert unrolled > 1.3 * aot.hlo_flops(aot.lower_train(c, devices)[0])


@pytest.mark.slow
def test_fsdp_train_step_moves_no_activations():
  """Activation sharding on 8 CPU devices (fsdp=8) with a head wide enough for FSDP to shard
  its kernels (width 1024, as B/16): the partitioned step has parameter all-gathers and no
  all-to-all (XLA's SPMD partitioner is the one TPU runs; before the head's row constraints
  this program had 7 all-to-alls, the TPU B/16 step 12-16)."""
  from tests.helpers import train_config
  c = train_config(**{"model.diff_width": 1024, "model.width": 256, "model.dec_width": 256})
  c.batch_size = 64
  c.mesh.update(data=1, fsdp=8)
  compiled, _, _ = aot.compile_train(c, jax.devices())
  counts = aot.count_collectives(compiled.as_text())
  assert counts.get("all-gather", 0) > 0 and "all-to-all" not in counts, counts


HLO = """
  %all-gather-start.1 = (f32[8]{0}, f32[64]{0}) all-gather-start(f32[8]{0} %p), dimensions={0}
  %all-gather-done.1 = f32[64]{0} all-gather-done((f32[8]{0}, f32[64]{0}) %all-gather-start.1)
  %all-reduce.2 = f32[4]{0} all-reduce(f32[4]{0} %x), to_apply=%add
  %all-reduce-scatter.3 = f32[2]{0} fusion(f32[16]{0} %y), kind=kOutput, calls=%fused
  %all-to-all = f32[2,4]{1,0} all-to-all(f32[2,4]{1,0} %z), dimensions={1}
  %cp = f32[4]{0} collective-permute-start(f32[4]{0} %w), source_target_pairs={{0,1}}
  %cc = f32[4]{0} custom-call(f32[4]{0} %v), custom_call_target="AsyncCollectiveStart"
  %add.9 = f32[4]{0} add(f32[4]{0} %all-reduce.2, f32[4]{0} %all-reduce.2)
"""


def test_count_collectives():
  assert aot.count_collectives(HLO) == {
      "AsyncCollectiveStart": 1, "all-gather": 1, "all-reduce": 1, "all-to-all": 1,
      "collective-permute": 1, "reduce-scatter (fusion)": 1}


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install -r requirements-tpu.txt); CI "
                           "does not run TPU compiles")
def test_tiny_config_compiles_for_a_tpu_slice(tmp_path):
  row = aot.main(["--config=configs/dream_b16.py:runlocal", "--topology=v5:2x2x1", "--scan",
                  "--remat=full", f"--json={tmp_path}/rows.jsonl"])
  assert row["chips"] == 4 and row["mesh"] == "data=1 x fsdp=4"
  assert 0 < row["peak_gib"] < 1 and row["xla_tflop"] > 0
  assert row["collectives"].get("all-gather", 0) > 0          # FSDP gathers parameters
  assert "all-to-all" not in row["collectives"], row["collectives"]
  assert (tmp_path / "rows.jsonl").read_text().count("\n") == 1


@pytest.mark.slow
def test_sampling_program_compiles_ahead_of_time_on_cpu_devices():
  """`--what=sample` plumbing without libtpu: the sampler's SAD program traced with abstract
  EMA parameters in the FSDP state sharding and abstract prompts, compiled for 8 CPU devices;
  its report has memory and the parameter all-gathers FSDP implies."""
  from tests.helpers import train_config
  c = train_config()
  c.mesh.update(data=4, fsdp=2)
  c.sampling.update(num_steps=4, num_diffusion_steps="3", sad_candidates=2, sad_step=2)
  compiled, tr, times = aot.compile_sample(c, jax.devices(), mode="sad", num_prompts=8)
  row = aot.report(c, compiled, times, topology="cpu:8", num_devices=8, ratio=0.5, what="sad")
  assert row["what"] == "sad" and row["chips"] == 8 and times["compile_s"] > 0
  assert row["argument_gib"] > 0 and row["xla_tflop"] > 0
  assert "analytic_useful_tflop" not in row            # no train-step FLOP count for sampling
  assert row["collectives"].get("all-gather", 0) > 0, row["collectives"]
  # The compiled program runs: real EMA params and prompts give uint8 images of 8 prompts.
  state = tr.fresh_state()
  sampler = tr.components.sampler()
  batch = sampler.tokenize(["a red circle"] * 8)
  from dream_jax.train import sharding
  with jax.set_mesh(tr.mesh):
    out = compiled(dict(params=state["ema_params"], batch_stats=state["batch_stats"]),
                   tr.frozen, sharding.global_batch(tr.mesh, batch), sampler.conditioning.empty,
                   jax.random.key(0), np.float32(1.0), np.float32(3.0))
  assert out["images"].shape == (8, 16, 16, 3) and out["images"].dtype == np.uint8


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install -r requirements-tpu.txt); CI "
                           "does not run TPU compiles")
def test_tiny_sampler_compiles_for_a_tpu_slice():
  row = aot.main(["--config=configs/dream_b16.py:runlocal", "--topology=v5:2x2x1",
                  "--what=sample", "--mode=sad"])
  assert row["what"] == "sad" and row["chips"] == 4 and row["batch"] == 4
  assert 0 < row["peak_gib"] < 1 and row["collectives"].get("all-gather", 0) > 0
