"""dream_jax.tools.compile_log: per-fusion lowering times from a libtpu INFO log. The log
below is made of lines in the format libtpu 0.0.42 writes with
--vmodule=lowering_emitter=2 (copied from a real log, names and times changed), interleaved
across two lowering threads; the expected times are recomputed from the timestamps."""
import io

import pytest

from dream_jax.tools import compile_log

P = "jit(train_step)/jvp()/cond"
LOG = f"""\
I1202 17:51:44.645135    3506 deepsea_compiler_hlo_passes.cc:6241] HLO_PASSES stage duration: 1m3.9s
I1202 17:52:00.000000    11 lowering_emitter.cc:6037] Started lowering fusion.7
I1202 17:52:00.000100    11 lowering_emitter.cc:5283] SEQUENTIAL_TRY_START: hlo=fusion.7 attempt=1 retry_count=0 bounds=[N/A] retry_opt=false
I1202 17:52:00.500000    12 lowering_emitter.cc:6037] Started lowering add_convert_fusion.88
I1202 17:52:00.500100    12 lowering_emitter.cc:5283] SEQUENTIAL_TRY_START: hlo=add_convert_fusion.88 attempt=1 retry_count=0 bounds=[N/A] retry_opt=false
I1202 17:52:02.250000    12 lowering_emitter.cc:5588]  XLA TPU Compiler reporting instr:%add_convert_fusion.88 = (bf16[64,320,768]{{2,1,0:T(8,128)(2,1)S(1)}}, f32[64,320,768]{{2,1,0}}) fusion(%p.1, %p.2), kind=kLoop, calls=%fused_computation.1, metadata={{op_name="{P}/branch_0_fun/DREAM.encode/z_proj_ln/convert_element_type" stack_frame_id=696}}
I1202 17:52:02.250100    12 lowering_emitter.cc:6139] Finished lowering add_convert_fusion.88
I1202 17:52:03.000000    11 lowering_emitter.cc:5283] SEQUENTIAL_TRY_START: hlo=fusion.7 attempt=2 retry_count=1 bounds=[N/A] retry_opt=false
W1202 17:52:04.000000    11 lowering_emitter.cc:6105] Successful retry compilation of fusion.7 after retry_count=1
I1202 17:52:04.000000    11 lowering_emitter.cc:5588]  XLA TPU Compiler reporting instr:%fusion.7 = bf16[64,320,12,64]{{1,3,2,0}} fusion(%a, %b), kind=kOutput, calls=%fused_computation.2, metadata={{op_name="{P}/branch_3_fun/DREAM.encode/encoder_blocks/while/body/closed_call/layers/block/attn/bhqk,bkhd->bqhd/dot_general"}}
I1202 17:52:04.000200    11 lowering_emitter.cc:6139] Finished lowering fusion.7
I1202 17:52:04.100000    12 lowering_emitter.cc:6037] Started lowering copy.3
I1202 17:52:04.350000    12 lowering_emitter.cc:6139] Finished lowering copy.3
I1202 17:52:05.000000    11 lowering_emitter.cc:6037] Started lowering subtract_multiply_fusion.2
I1202 17:52:05.000000    11 lowering_emitter.cc:5588]  XLA TPU Compiler reporting instr:%subtract_multiply_fusion.2 = f32[12,768,96]{{2,1,0}} fusion(%x), kind=kLoop, calls=%fused_computation.3, metadata={{op_name="jit(train_step)/sub"}}
I1202 17:52:05.400000    11 lowering_emitter.cc:6139] Finished lowering subtract_multiply_fusion.2
"""


def test_times_attempts_and_parts_from_the_timestamps():
  fs = compile_log.parse(io.StringIO(LOG))
  assert set(fs) == {"fusion.7", "add_convert_fusion.88", "copy.3", "subtract_multiply_fusion.2"}
  assert fs["fusion.7"].seconds == pytest.approx(4.0002)          # 17:52:00.0 -> 04.0002
  assert fs["fusion.7"].attempts == 2
  assert fs["add_convert_fusion.88"].seconds == pytest.approx(1.7501)
  assert fs["add_convert_fusion.88"].shape.startswith("(bf16[64,320,768]")
  assert fs["copy.3"].seconds == pytest.approx(0.25) and fs["copy.3"].op_name == ""
  assert compile_log.part(fs["fusion.7"]) == "DREAM.encode branch_3"
  assert compile_log.part(fs["add_convert_fusion.88"]) == "DREAM.encode branch_0"
  assert compile_log.part(fs["copy.3"]) == "no op_name"
  assert compile_log.part(fs["subtract_multiply_fusion.2"]) == "optimizer / outside the model"
  out = io.StringIO()
  compile_log.report(fs, top=2, out=out)
  text = out.getvalue()
  total = 4.0002 + 1.7501 + 0.25 + 0.4
  assert f"4 fusions lowered in {total:.1f} s" in text
  assert "1 retried, 4.0 s of it" in text
  assert "slowest 2:" in text and "copy.3" not in text.split("by part")[0]
  assert f"inside scanned layer bodies (op_name '/while/body/'): 4.0 s ({100 * 4.0002 / total:.1f}%)" in text


def test_a_log_without_the_vmodule_flag_is_refused():
  with pytest.raises(ValueError, match="vmodule=lowering_emitter=2"):
    compile_log.parse(io.StringIO(LOG.splitlines()[0] + "\n"))
