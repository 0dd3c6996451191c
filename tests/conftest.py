"""Test setup: 8 fake CPU devices (sharding tests) and a persistent compile cache. Shared
tiny configs and the fixtures path are in tests/helpers.py.

Both must be configured before jax is imported anywhere, which is why they live here.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# ... with the XLA:CPU options main.py runs with, so the parity tests check those numerics.
from dream_jax.utils import xla_cpu  # noqa: E402

xla_cpu.use_default_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

_CACHE = os.environ.get("DREAM_JAX_TEST_CACHE",
                        os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_default_matmul_precision", "highest")

