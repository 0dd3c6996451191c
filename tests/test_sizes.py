"""DREAM-B/L/H/G: parameter counts equal the official architectures', by `jax.eval_shape`
only (nothing is allocated or compiled)."""
import importlib

import pytest

# docs/PERF_ANCHOR.md: counts of the official classes (diffusion head 3 x 1024), which
# include a 1000-class embedding text-to-image never uses (`describe.official_extras`).
OFFICIAL = {"dream_b16": 329_357_857, "dream_l16": 635_989_793, "dream_h16": 1_128_416_289,
            "dream_g16": 2_432_714_657}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_paper_sizes_match_the_official_parameter_counts(name):
  from dream_jax.tools import describe
  c = importlib.import_module(f"configs.{name}").get_config()
  counts = describe.count_params(c)
  assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
  assert counts["total"] + describe.official_extras(c) == OFFICIAL[name]
