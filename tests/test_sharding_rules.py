"""config.mesh.param_rules: (regex, spec) rules over state paths, the shape rule by default."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dream_jax.train import sharding


def test_default_rule_is_the_shape_rule_except_the_layer_axis_of_stacks():
  for shape in [(4096, 3), (768, 2304), (16,), (1000, 8)]:
    assert sharding.leaf_spec("/params/z_proj/kernel", shape, 8) == sharding.fsdp_spec(shape, 8)
  # Unrolled: dim 0 is the only one divisible by 8, so it is split. Scanned stack: dim 0 is
  # the layer axis and is never split (the leaf is replicated instead).
  assert sharding.leaf_spec("/params/x_0/kernel", (8, 1001), 8) == P("fsdp", None)
  assert sharding.leaf_spec("/params/x/layers/block/kernel", (8, 1001), 8) == P()
  assert sharding.leaf_spec("/params/x/layers/block/kernel", (12, 768, 2304), 8) == P(
      None, None, "fsdp")


def test_custom_rules_on_a_state_tree():
  mesh = jax.make_mesh((1, 8), sharding.AXES, devices=jax.devices()[:8])
  state = dict(params=dict(dec=dict(kernel=jnp.zeros((64, 128))), enc=dict(kernel=jnp.zeros(
      (64, 128)))), opt_state=(dict(mu=dict(dec=dict(kernel=jnp.zeros((64, 128))))),))
  rules = ((r"/dec/kernel$", (None, "fsdp")), (".*", "replicate"))
  sh = sharding.tree_shardings(mesh, state, rules)
  assert sh["params"]["dec"]["kernel"].spec == P(None, "fsdp")
  assert sh["opt_state"][0]["mu"]["dec"]["kernel"].spec == P(None, "fsdp")   # moments follow
  assert sh["params"]["enc"]["kernel"].spec == P()
  default = sharding.tree_shardings(mesh, state)
  assert default["params"]["enc"]["kernel"].spec == sharding.fsdp_spec((64, 128), 8)


def test_bad_rules_name_the_leaf():
  with pytest.raises(ValueError, match="does not fit /params/a of shape"):
    sharding.leaf_spec("/params/a", (6, 4), 4, ((".*", ("fsdp", None)),))
  with pytest.raises(ValueError, match="no rule matches /params/a"):
    sharding.leaf_spec("/params/a", (6, 4), 4, (("^/ema", "fsdp"),))


def test_paper_config_has_the_default_rule():
  from configs import dream_b16
  c = dream_b16.get_config()
  assert tuple(map(tuple, c.mesh.param_rules)) == sharding.DEFAULT_RULES
  assert np.all([isinstance(r[0], str) for r in c.mesh.param_rules])
