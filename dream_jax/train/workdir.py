"""Workdir safety: nothing is written before every check passed, writes are atomic, a rerun
with another config says which keys differ, and a run is complete only when `W/done.json`
says so.

Files of a workdir W that this module owns:
  config.json   the resolved config; written (atomically) only after config validation, the
                workdir comparison below, the mesh and the checkpoint compatibility passed.
  done.json     {"step": total_steps}: written after the final checkpoint, the final
                evaluation and the final samples. A rerun of a run without it (killed after
                its last checkpoint) completes what is missing and says so.

A rerun whose config differs from W/config.json is refused with the differing keys, unless
`allow_config_change=True` (main.py `--allow_config_change`) and every differing key is
non-structural (`NON_STRUCTURAL`: run length, logging, evaluation, sampling, checkpoint
cadence, data-loading performance). Model, tokenizer, text and objective keys never change
within a workdir: its checkpoints and samples belong to one model.
"""
from __future__ import annotations

import json
import os
import tempfile

# Keys (or prefixes 'evals.' / 'sampling.') that a resumed run may change when allowed.
NON_STRUCTURAL = ("total_steps", "log_every", "evals.", "sampling.", "ckpt.every", "ckpt.keep",
                  "ckpt.permanent_every", "ckpt.init_from", "data.num_workers",
                  "data.eval_size", "data.eval_path", "data.max_bad_fraction", "mesh.")


class WorkdirError(ValueError):
  """A run that would change a workdir it does not belong to (nothing was written)."""


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file in the same directory + rename, so a
  reader (or a killed writer) never sees a partial file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _flat(tree, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      sub = _flat(v, f"{prefix}{k}.")
      out.update(sub if sub else {f"{prefix}{k}": {}})
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_diff(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """[(dotted key, workdir value, this run's value)] of every differing leaf; a key missing
  on one side has the value '<absent>'."""
  a, b = _flat(old), _flat(new)
  absent = "<absent>"
  return [(k, a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b))
          if a.get(k, absent) != b.get(k, absent)]


def is_structural(key: str) -> bool:
  return not any(key == p or (p.endswith(".") and key.startswith(p)) for p in NON_STRUCTURAL)


def config_as_json_dict(config) -> dict:
  """The config as config.json stores it (tuples as lists)."""
  return json.loads(config.to_json())


def check_config(config, workdir: str, *, allow_config_change: bool) -> list[str]:
  """Compares `config` with W/config.json (if any) BEFORE anything is written.

  Returns the differing keys that are allowed to change (logged by the caller); raises
  WorkdirError naming every differing key otherwise. Keys the workdir's config predates take
  their current defaults first, renamed keys their new names (`inference.load_config`).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    try:
      json.load(f)
    except ValueError as e:
      raise WorkdirError(f"{path} is not valid JSON ({e}); this workdir's config is damaged, "
                         "refusing to run in it") from e
  from dream_jax.train.inference import load_config   # renames, defaults of older workdirs
  old = config_as_json_dict(load_config(workdir))
  diff = config_diff(old, config_as_json_dict(config))
  if not diff:
    return []
  lines = [f"  config.{k}: workdir {_short(a)} vs this run {_short(b)}" for k, a, b in diff]
  structural = [k for k, _, _ in diff if is_structural(k)]
  if structural:
    raise WorkdirError(
        f"the config differs from {path} in structural keys (model, tokenizer, text, "
        f"objective or data shape), which a workdir never changes; nothing was written. "
        f"Use another --workdir for this config.\n" + "\n".join(lines))
  if not allow_config_change:
    raise WorkdirError(
        f"the config differs from {path}; nothing was written. Rerun with the workdir's "
        f"config, or pass --allow_config_change to resume with these non-structural changes:"
        "\n" + "\n".join(lines))
  return [k for k, _, _ in diff]


def _short(v) -> str:
  s = json.dumps(v) if not isinstance(v, str) or v == "<absent>" else repr(v)
  return s if len(s) <= 80 else s[:77] + "..."


def write_config(config, workdir: str) -> None:
  atomic_write_text(os.path.join(workdir, "config.json"), config.to_json(indent=2))


def read_done(workdir: str) -> dict | None:
  path = os.path.join(workdir, "done.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_done(workdir: str, step: int) -> None:
  atomic_write_text(os.path.join(workdir, "done.json"), json.dumps(dict(step=int(step))) + "\n")


def clear_done(workdir: str) -> None:
  path = os.path.join(workdir, "done.json")
  if os.path.exists(path):
    os.remove(path)
