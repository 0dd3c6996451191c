"""Reading released PyTorch weights from local files and mapping them onto Flax param trees.

Readers:
  * `load_safetensors(path)`: a dependency-free reader (numpy + ml_dtypes) of the
    safetensors format; handles F32/F16/BF16/I64/... without torch.
  * `load_torch_bin(path)`: `pytorch_model.bin` / `diffusion_pytorch_model.bin`; these are
    pickles, so torch is required (a clear error says so when it is missing).
  * `find_weights_file(directory, names, ...)`: the first of the candidate file names present,
    or a FileNotFoundError that says which file is needed and where it is usually obtained.

Mapping (`torch_to_flax`): our Flax modules are named after the PyTorch modules, so a torch
key maps mechanically to a Flax path: `a.b.3.c.weight` -> `a/b_3/c/<leaf>` (a numeric
segment joins the name before it). The leaf is chosen by what the Flax target holds there:
`kernel` (Linear weight transposed; Conv weight OIHW -> HWIO), `embedding`, `scale` (norm
weights) or `bias`. Every target leaf must be filled with the right shape, so the mapping is
also the key/shape manifest check against the real layouts.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Callable, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np
from flax import traverse_util

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors file into {name: np.ndarray} (dtype as stored; no torch)."""
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
    base = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    buf = np.asarray(data[base + start: base + end]).copy()
    out[name] = buf.view(dtype).reshape(info["shape"])
  return out


def load_torch_bin(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch pickle (`*.bin`, `*.pt`) into {name: float32/int np.ndarray}."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        f"Reading {path} needs PyTorch (.bin checkpoints are torch pickles). Either install "
        "torch (`pip install torch`, CPU build is enough) or use the .safetensors file of the "
        "same release, which needs no torch.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if "state_dict" in state and isinstance(state["state_dict"], Mapping):
    state = state["state_dict"]
  out = {}
  for k, v in state.items():
    if not hasattr(v, "numpy"):
      continue
    v = v.detach()
    if v.is_floating_point():
      v = v.float()
    out[k] = v.numpy()
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Dispatches on the file extension (.safetensors or a torch pickle)."""
  if path.endswith(".safetensors"):
    return load_safetensors(path)
  return load_torch_bin(path)


def find_weights_file(directory: str, names: Iterable[str], *, what: str, hint: str,
                      config_key: str = "") -> str:
  """The first of `names` that exists in `directory`.

  Raises FileNotFoundError naming the files that were looked for, the config key that holds
  the path, and where such files are usually obtained (`hint`).
  """
  names = list(names)
  where = f" (set by {config_key})" if config_key else ""
  if not directory:
    raise FileNotFoundError(
        f"No directory given for {what}{where}. It needs one of {names}. {hint}")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"{what}: directory {directory!r}{where} does not exist. It needs one of {names}. "
        f"{hint}")
  for name in names:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f"{what}: none of {names} found in {directory!r}{where}. {hint}")


def read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def torch_key_to_path(key: str) -> tuple[tuple[str, ...], str]:
  """'encoder.down_blocks.0.resnets.1.conv1.weight' -> (('encoder', 'down_blocks_0',
  'resnets_1', 'conv1'), 'weight')."""
  parts = key.split(".")
  *mods, leaf = parts
  path: list[str] = []
  for p in mods:
    if p.isdigit() and path:
      path[-1] = f"{path[-1]}_{p}"
    else:
      path.append(p)
  return tuple(path), leaf


def plan_conversion(shapes: Mapping[str, Sequence[int]], target: Mapping, *,
                    rename: Callable[[str], str | None] | None = None,
                    ignore: Iterable[str] = ()) -> dict[str, tuple[tuple[str, ...], str]]:
  """Matches torch keys to Flax leaves using shapes only (no tensor data needed).

  Args:
    shapes: {torch key: shape} (e.g. from a `meta`-device model, or a real state dict).
    target: nested dict of arrays or ShapeDtypeStructs (e.g. `jax.eval_shape(init)`),
      the params collection only.
    rename: optional torch-key rewrite applied first (return None to drop a key), for
      legacy names (e.g. diffusers' old `query/key/value/proj_attn`).
    ignore: regexes of (renamed) torch keys expected to have no Flax counterpart (tied
      embeddings, buffers, heads we do not port).

  Returns {torch key: (flax path, how)} with `how` in {'copy', 'linear', 'conv', 'conv1x1'}.
  Raises ValueError listing every missing target leaf, unexpected torch key and shape
  mismatch at once, so one run shows the whole difference.
  """
  flat_target = traverse_util.flatten_dict(dict(target))
  ignore_res = [re.compile(p) for p in ignore]
  plan, unexpected, mismatched = {}, [], []
  for key, shape in shapes.items():
    shape = tuple(int(d) for d in shape)
    new_key = rename(key) if rename else key
    if new_key is None or any(r.fullmatch(new_key) for r in ignore_res):
      continue
    path, leaf = torch_key_to_path(new_key)
    if leaf in ("weight", "gamma"):
      candidates = ("kernel", "embedding", "scale")
    elif leaf in ("bias", "beta"):
      candidates = ("bias",)
    else:
      candidates = (leaf,)
    found = [c for c in candidates if path + (c,) in flat_target]
    if not found:
      unexpected.append(f"{key} {shape}")
      continue
    tgt = path + (found[0],)
    want = tuple(flat_target[tgt].shape)
    how, got = "copy", shape
    if found[0] == "kernel" and len(shape) == 4 and len(want) == 2:
      how, got = "conv1x1", (shape[1], shape[0])  # legacy 1x1-conv attention projections
    elif found[0] == "kernel" and len(shape) == 4:
      how, got = "conv", (shape[2], shape[3], shape[1], shape[0])  # OIHW -> HWIO
    elif found[0] == "kernel" and len(shape) == 2:
      how, got = "linear", (shape[1], shape[0])  # [out, in] -> [in, out]
    if got != want:
      mismatched.append(f"{key} {shape} -> {'/'.join(tgt)} expects {want}")
      continue
    plan[key] = (tgt, how)
  done = {v[0] for v in plan.values()}
  missing = [f"{'/'.join(k)} {tuple(v.shape)}" for k, v in flat_target.items() if k not in done]
  if missing or unexpected or mismatched:
    lines = []
    for title, items in (("missing in checkpoint", missing),
                         ("unexpected in checkpoint", unexpected),
                         ("shape mismatch", mismatched)):
      if items:
        lines.append(f"{title} ({len(items)}): " + "; ".join(items[:20])
                     + (" ..." if len(items) > 20 else ""))
    raise ValueError("Checkpoint does not match the Flax architecture:\n" + "\n".join(lines))
  return plan


_TRANSFORMS = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: np.transpose(a, (2, 3, 1, 0)),
    "conv1x1": lambda a: a[:, :, 0, 0].T,
}


def torch_to_flax(state: Mapping[str, np.ndarray], target: Mapping, *,
                  rename: Callable[[str], str | None] | None = None,
                  ignore: Iterable[str] = (), dtype=np.float32) -> dict:
  """Maps a torch state dict onto a Flax param tree with the shapes of `target`.

  See `plan_conversion` for `rename`/`ignore` and the errors. Floating params are cast to
  `dtype` (float32 by default, also for bf16/fp16 checkpoints).
  """
  plan = plan_conversion({k: np.shape(v) for k, v in state.items()}, target,
                         rename=rename, ignore=ignore)
  out = {}
  for key, (tgt, how) in plan.items():
    arr = _TRANSFORMS[how](np.asarray(state[key]))
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype == ml_dtypes.bfloat16:
      arr = arr.astype(dtype)
    out[tgt] = np.ascontiguousarray(arr)
  return traverse_util.unflatten_dict(out)


def param_manifest(params) -> dict[str, list[int]]:
  """{'a/b/kernel': shape} of a param tree (what the converter writes beside the weights)."""
  flat = traverse_util.flatten_dict(dict(params))
  return {"/".join(k): list(np.shape(v)) for k, v in sorted(flat.items())}


def save_params(directory: str, params, meta: dict) -> None:
  """Writes `params.msgpack` (flax.serialization) and `manifest.json` into `directory`."""
  from flax import serialization
  os.makedirs(directory, exist_ok=True)
  flat = traverse_util.flatten_dict(dict(params))
  host = traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat.items()})
  with open(os.path.join(directory, "params.msgpack"), "wb") as f:
    f.write(serialization.msgpack_serialize(host))
  manifest = dict(meta)
  manifest["format_version"] = 1
  manifest["num_params"] = int(sum(np.size(v) for v in flat.values()))
  manifest["params"] = param_manifest(params)
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)


def load_converted_params(directory: str) -> dict:
  """Reads `params.msgpack` written by `save_params` (numpy leaves)."""
  from flax import serialization
  with open(os.path.join(directory, "params.msgpack"), "rb") as f:
    return serialization.msgpack_restore(f.read())


def is_converted_dir(directory: str) -> bool:
  return bool(directory) and os.path.exists(os.path.join(directory, "params.msgpack"))
