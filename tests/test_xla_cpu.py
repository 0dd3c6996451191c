"""The XLA:CPU defaults that main.py adds to XLA_FLAGS (dream_jax/utils/xla_cpu.py)."""
import os

from dream_jax.utils import xla_cpu


def test_defaults_are_added_once_and_user_flags_win():
  assert xla_cpu.with_default_flags("") == "--xla_cpu_use_onednn=true"
  both = xla_cpu.with_default_flags("--xla_force_host_platform_device_count=8")
  assert both.split() == ["--xla_force_host_platform_device_count=8",
                          "--xla_cpu_use_onednn=true"]
  assert xla_cpu.with_default_flags(both) == both                      # idempotent
  off = "--xla_cpu_use_onednn=false --xla_dump_to=/tmp/x"
  assert xla_cpu.with_default_flags(off) == off                         # the user's value stays
  assert xla_cpu.with_default_flags("", defaults=("--a=1", "--b")) == "--a=1 --b"


def test_environment_and_opt_out():
  env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  xla_cpu.use_default_flags(env)
  assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_cpu_use_onednn=true"
  env = {}
  xla_cpu.use_default_flags(env)
  assert env == {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}
  env = {xla_cpu.OPT_OUT: "1"}
  xla_cpu.use_default_flags(env)
  assert "XLA_FLAGS" not in env


def test_this_test_process_runs_with_them():
  # tests/conftest.py applies them before jax starts, so every test checks these numerics.
  # (a value the user set for the flag counts: theirs wins)
  flags = os.environ["XLA_FLAGS"]
  assert xla_cpu.with_default_flags(flags) == flags
  assert any(f.startswith("--xla_cpu_use_onednn=") for f in flags.split())
