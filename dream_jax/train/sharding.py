"""Device mesh and sharding rules (big_vision's sharding.py style, shape-based FSDP).

Mesh: 2-D ('data', 'fsdp') from `config.mesh` (-1 = all remaining devices). Parameters,
their EMA and the optimiser moments are FSDP-sharded: each array with at least
`FSDP_MIN_SIZE` elements is split over 'fsdp' along its LARGEST dimension divisible by the
axis size; small arrays (biases, norms, scalars) are replicated. The batch is split along
axis 0 over both axes, so every device sees B / (data * fsdp) samples. With fsdp = 1 this is
plain data parallelism. Results do not depend on the mesh (the objective reduces over the
global batch; XLA inserts the collectives).
"""
from __future__ import annotations

import re

import numpy as np
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")     # the batch dimension is split over both axes
FSDP_MIN_SIZE = 2 ** 12           # smaller arrays are cheaper replicated than gathered
# config.mesh.param_rules default (big_vision style (regex, spec) pairs): the shape rule.
DEFAULT_RULES = ((".*", "fsdp"),)


def mesh_shape(config, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) from config.mesh; a clear error when it does not fit the devices/batch."""
  data, fsdp = int(config.mesh.data), int(config.mesh.fsdp)
  if fsdp < 1 or num_devices % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} does not divide the {num_devices} devices")
  if data == -1:
    data = num_devices // fsdp
  if data < 1 or data * fsdp != num_devices:
    raise ValueError(f"config.mesh: data={config.mesh.data} x fsdp={fsdp} = {data * fsdp} "
                     f"does not match the {num_devices} available devices")
  micro = config.batch_size // max(1, config.grad_accum_steps)
  if micro % (data * fsdp):
    raise ValueError(f"config.batch_size={config.batch_size} (micro-batch {micro} with "
                     f"grad_accum_steps={config.grad_accum_steps}) is not divisible by the "
                     f"{data}x{fsdp} = {data * fsdp} devices of the mesh")
  return data, fsdp


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def fsdp_spec(shape, fsdp_size: int, skip_leading: bool = False) -> P:
  """PartitionSpec for one array: 'fsdp' on its largest divisible dim, or replicated.
  skip_leading: never split dim 0 (the layer axis of scanned stacks: splitting it would
  gather a whole stack per layer)."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  dims = range(1 if skip_leading else 0, len(shape))
  for dim in sorted(dims, key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


STACKED = re.compile(r"/layers/block/")   # scanned stacks (models/layers.ScannedBlocks)


def leaf_spec(path: str, shape, fsdp_size: int, rules=DEFAULT_RULES) -> P:
  """The spec of the first rule (regex, spec) whose regex `re.search`es `path`.

  spec: 'fsdp' (the shape rule above; dim 0 of scanned stacks excluded), 'replicate', or a
  tuple of mesh axis names / None per dim, e.g. (None, 'fsdp'). A rule whose tuple does not
  fit the leaf (rank, divisibility) is an error naming the rule and the leaf.
  """
  for pattern, spec in rules:
    if not re.search(pattern, path):
      continue
    if spec == "fsdp":
      return fsdp_spec(shape, fsdp_size, skip_leading=bool(STACKED.search(path)))
    if spec == "replicate":
      return P()
    spec = tuple(spec)
    if len(spec) != len(shape) or any(a == "fsdp" and shape[i] % fsdp_size
                                      for i, a in enumerate(spec)):
      raise ValueError(f"config.mesh.param_rules: rule ({pattern!r}, {spec}) does not fit "
                       f"{path} of shape {tuple(shape)} with fsdp={fsdp_size}")
    return P(*spec)
  raise ValueError(f"config.mesh.param_rules: no rule matches {path} (end with ('.*', "
                   "'fsdp') or ('.*', 'replicate'))")


def path_str(path) -> str:
  """'params/encoder_blocks/layers/block/attn/qkv/kernel' for a pytree key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def tree_shardings(mesh, shapes, rules=DEFAULT_RULES):
  """NamedShardings for a pytree of ShapeDtypeStructs / arrays (rules above; the default is
  the shape-based FSDP rule for every leaf). Paths are the state's: `params/...`,
  `ema_params/...`, `opt_state/.../mu/...`, so one regex on the parameter name covers the
  parameter, its EMA and its Adam moments."""
  fsdp = mesh.shape["fsdp"]
  rules = tuple(tuple(r) for r in rules)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, leaf_spec("/" + path_str(p), np.shape(x), fsdp, rules)),
      shapes)


def is_compile_only(mesh) -> bool:
  """True for meshes over devices this process cannot run on, e.g. the TPU topology
  devices of `jax.experimental.topologies` used for ahead-of-time compiles on a CPU host."""
  local = set(jax.devices())
  return any(d not in local for d in mesh.devices.flat)


def abstract(tree, sharding_or_tree):
  """Pytree of arrays / ShapeDtypeStructs -> ShapeDtypeStructs carrying shardings (one
  sharding for every leaf, or a matching pytree of them)."""
  if isinstance(sharding_or_tree, jax.sharding.Sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                       sharding=sharding_or_tree), tree)
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh),
                      tree, sharding_or_tree)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(mesh, local_batch: dict) -> dict:
  """Host-local numpy batch -> global jax arrays sharded along axis 0 over the mesh.

  Keys whose values are not numeric arrays (captions, strings) stay on the host and are
  dropped here.
  """
  sh = batch_sharding(mesh)
  out = {}
  for k, v in local_batch.items():
    a = np.asarray(v)
    if a.dtype.kind not in "biuf" or a.ndim == 0:
      continue
    out[k] = jax.make_array_from_process_local_data(sh, a)
  return out
