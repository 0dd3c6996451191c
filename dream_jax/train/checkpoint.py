"""Orbax checkpoints of the train state: `W/checkpoints/<step>/`.

Each step directory holds four items (one atomic orbax checkpoint):
  state/       {step, params, opt_state, rng}                 (StandardSave, sharded arrays)
  ema/         {params: EMA params, batch_stats: BN running statistics}
               -- the inference variables, restorable alone (sampler, evaluators)
  data_iter/   the train iterator's grain state (JSON)
  meta/meta.json  format version, step, shape manifest {path: [shape, dtype]} of state and
               ema, and the config's model-defining sections (for humans)
Frozen parameters (VAE / T5) are not checkpointed: they come from their files.

Retention: the last `ckpt.keep` plus every multiple of `ckpt.permanent_every` (orbax
`max_to_keep` + `keep_period`). Saves are asynchronous; `wait()` before exiting.
A checkpoint whose manifest does not match the config is refused with the mismatching names.
A save that fails (disk full, permissions, ...) raises `CheckpointSaveError` naming the step
and the last complete checkpoint, once (orbax's per-array error logs are filtered): at the
save itself, or at the first `check_saves()` after the background write failed (the
trainer polls every step, so it stops within the write's duration) and at the latest at
the next save or `wait()`.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written; the previous complete checkpoint is untouched."""


class _SaveErrorLogFilter:
  """A failed orbax save logs a traceback per array it could not write (hundreds: orbax's
  thread errors, asyncio's 'Task exception was never retrieved'). CheckpointSaveError
  reports the failure once; this filter drops those records and counts them."""

  def __init__(self):
    self.dropped = 0

  def filter(self, record) -> bool:
    import logging
    if record.levelno < logging.ERROR:
      return True
    text = record.getMessage()
    from_orbax = "/orbax/" in (record.pathname or "") or "orbax" in text
    if from_orbax or "Task exception was never retrieved" in text:
      self.dropped += 1
      return False
    return True


_LOG_FILTER = _SaveErrorLogFilter()


def _install_log_filter() -> None:
  import logging
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if _LOG_FILTER not in logger.filters:
      logger.addFilter(_LOG_FILTER)


def _describe(e: Exception) -> str:
  """One line: the exception type and the end of its first line (where the cause is)."""
  line = (str(e).splitlines() or [""])[0]
  if len(line) > 240:
    line = "..." + line[-240:]
  return f"{type(e).__name__}: {line}"
ITEMS = ("state", "ema", "data_iter", "meta")


def manifest(tree, prefix: str = "") -> dict[str, list]:
  """{'/'-joined path: [shape list, dtype str]} for every leaf of a pytree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = prefix + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[name] = [list(np.shape(leaf)), str(np.dtype(leaf.dtype)) if hasattr(leaf, "dtype")
                 else type(leaf).__name__]
  return out


def compare_manifests(found: dict, expected: dict, *, what: str) -> None:
  """Raises ValueError naming every missing / unexpected / differently-shaped entry."""
  missing = sorted(set(expected) - set(found))
  extra = sorted(set(found) - set(expected))
  differ = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
  if not (missing or extra or differ):
    return
  lines = [f"{what} does not fit the config:"]
  if missing:
    lines.append(f"  missing in checkpoint ({len(missing)}): " + ", ".join(missing[:20]))
  if extra:
    lines.append(f"  not in the config ({len(extra)}): " + ", ".join(extra[:20]))
  for k in differ[:20]:
    lines.append(f"  {k}: checkpoint {found[k]} vs config {expected[k]}")
  if len(differ) > 20:
    lines.append(f"  ... and {len(differ) - 20} more differing entries")
  raise ValueError("\n".join(lines))


def ema_variables(state: dict) -> dict:
  """The 'ema' item, and what evaluators and samplers run: EMA params + BatchNorm stats."""
  return {"params": state["ema_params"], "batch_stats": state["batch_stats"]}


def split_state(state: dict) -> tuple[dict, dict]:
  """Train state -> (state item, ema item)."""
  core = {k: state[k] for k in ("step", "params", "opt_state", "rng")}
  return core, ema_variables(state)


def join_state(core: dict, ema: dict) -> dict:
  return dict(core, ema_params=ema["params"], batch_stats=ema["batch_stats"])


def _abstract(tree):
  """ShapeDtypeStructs with shardings (restore targets) from arrays or structs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=getattr(x, "sharding", None)),
                      tree)


def resolve_dir(path: str) -> tuple[str, Optional[int]]:
  """A workdir, a checkpoints dir or one step dir -> (checkpoints dir, step or None)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), int(base)
  return path, None


class Checkpointer:
  """Save / restore the train state, EMA + BN statistics, data-iterator state and meta."""

  def __init__(self, directory: str, *, keep: int = 3, permanent_every: int = 0,
               read_only: bool = False, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep and keep > 0 else None,
        keep_period=permanent_every if permanent_every and permanent_every > 0 else None,
        create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    handlers = dict(state=ocp.StandardCheckpointHandler(), ema=ocp.StandardCheckpointHandler(),
                    data_iter=ocp.JsonCheckpointHandler(),
                    meta=ocp.JsonCheckpointHandler(filename="meta.json"))
    self.manager = ocp.CheckpointManager(self.directory, options=opts, item_handlers=handlers)
    self._pending: Optional[int] = None   # step of the save in flight (or not yet checked)
    if not read_only:
      _install_log_filter()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: dict, data_state: Any, extra_meta: Optional[dict] = None):
    core, ema = split_state(state)
    meta = dict(format_version=FORMAT_VERSION, step=int(step),
                manifest=dict(manifest(core, "state/"), **manifest(ema, "ema/")),
                **(extra_meta or {}))
    self.check_saves(block=True)   # the previous save's error belongs to its own step
    try:
      self.manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(core), ema=ocp.args.StandardSave(ema),
          data_iter=ocp.args.JsonSave(data_state if data_state is not None else {}),
          meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:   # noqa: BLE001  any failure of the write is fatal, named once
      raise self._save_error(int(step), e) from e
    self._pending = int(step)

  def check_saves(self, block: bool = False) -> None:
    """Raises CheckpointSaveError when the last save failed; block=True waits for it."""
    if self._pending is None:
      return
    if not block and self.manager.is_saving_in_progress():
      return
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:   # noqa: BLE001
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, e: Exception) -> CheckpointSaveError:
    try:
      self.manager.reload()
      good = [s for s in self.manager.all_steps() if s != step]
    except Exception:   # noqa: BLE001  the listing itself may fail on a broken disk
      good = []
    last = (f"step {max(good)}" if good else "none (no checkpoint was completed)")
    cause = _describe(e)
    return CheckpointSaveError(
        f"saving checkpoint step {step} in {self.directory} failed ({cause}); stopping. "
        f"The last complete checkpoint is {last}; a rerun resumes from it.")

  def read_meta(self, step: int) -> dict:
    out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = out["meta"]
    if meta.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"checkpoint {self.directory}/{step}: format_version "
                       f"{meta.get('format_version')} != {FORMAT_VERSION}")
    return meta

  def _check(self, step: int, expected: dict, prefix: str):
    found = {k: v for k, v in self.read_meta(step)["manifest"].items() if k.startswith(prefix)}
    part = f" ({prefix.rstrip('/')})" if prefix else ""
    compare_manifests(found, expected, what=f"checkpoint {self.directory}/{step}{part}")

  def restore(self, step: int, target_state: dict) -> tuple[dict, Any]:
    """(train state laid out like `target_state` (arrays or ShapeDtypeStructs with shardings),
    data-iterator state)."""
    core_t, ema_t = split_state(target_state)
    self._check(step, dict(manifest(core_t, "state/"), **manifest(ema_t, "ema/")), "")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(core_t)),
        ema=ocp.args.StandardRestore(_abstract(ema_t)),
        data_iter=ocp.args.JsonRestore()))
    return join_state(out["state"], out["ema"]), out["data_iter"]

  def restore_ema(self, step: int, target_ema: dict) -> dict:
    """Only {'params': EMA params, 'batch_stats'} (what sampling and evaluation need)."""
    self._check(step, manifest(target_ema, "ema/"), "ema/")
    out = self.manager.restore(step, args=ocp.args.Composite(
        ema=ocp.args.StandardRestore(_abstract(target_ema))))
    return out["ema"]

  def restore_params(self, step: int, target_params: dict, target_stats: dict) -> tuple:
    """(params, batch_stats) for `ckpt.init_from`: the raw params (state/params) and the BN
    statistics; the optimiser, step and EMA are not taken."""
    meta = self.read_meta(step)["manifest"]
    found = {k: v for k, v in meta.items() if k.startswith("state/params/")}
    compare_manifests(found, manifest(target_params, "state/params/"),
                      what=f"init_from checkpoint {self.directory}/{step} (params)")
    found = {k: v for k, v in meta.items() if k.startswith("ema/batch_stats/")}
    compare_manifests(found, manifest(target_stats, "ema/batch_stats/"),
                      what=f"init_from checkpoint {self.directory}/{step} (batch_stats)")
    # Partial restore of the 'state' item: read the whole tree's metadata shapes, keep params.
    core_meta = self.manager.item_metadata(step)["state"]
    core_meta = dict(getattr(core_meta, "tree", core_meta))
    core_t = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), core_meta)
    core_t["params"] = _abstract(target_params)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(core_t),
        ema=ocp.args.StandardRestore(_abstract(dict(params=target_params,
                                                      batch_stats=target_stats)))))
    return out["state"]["params"], out["ema"]["batch_stats"]

  def wait(self):
    self.check_saves(block=True)
    self.manager.wait_until_finished()

  def close(self):
    self.wait()
    self.manager.close()
