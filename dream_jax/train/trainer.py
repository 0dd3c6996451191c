"""The one trainer: any config, from a laptop CPU to a TPU pod (big_vision/train.py style).

Order of events in `train(config, workdir)`:
  1. config validated (configs/validation.py); mesh from config.mesh ('data' x 'fsdp');
  2. state shapes by `jax.eval_shape`, shardings by the FSDP rule, state created by a jitted
     init with `out_shardings` (never materialised on one device);
  3. the workdir's config.json compared with this config (dream_jax/train/workdir.py: a
     differing key is refused, non-structural ones allowed with allow_config_change); the
     data sources opened; resume from the latest W/checkpoints/<step> if any (state, EMA +
     BN stats, data iterator with its skip counts), else `ckpt.init_from`, else fresh. Only
     then is anything written: W/config.json (atomic), metrics rows after the resumed step
     dropped (a killed run's replayed steps), W/done.json removed;
  4. loop: global batch -> donated jitted step -> metrics (process 0) -> checkpoints every
     `ckpt.every` and at the end -> that step's evaluators (step 0, every
     `evals.<name>.every`, the end) and sample grids of `sampling.prompts` (every
     `sampling.every`, the end; W/samples/step_*.png, atomic). A resumed run first completes
     the evaluations and samples of its resumed step that are missing (a run killed after a
     checkpoint, the final one included, says so); W/done.json is written after the final
     ones. A non-finite loss or gradient stops the run with an error; the state that
     produced it is never written, so the last good checkpoint stays the latest. A failed
     checkpoint save stops the run with one CheckpointSaveError; any other crash first
     finishes the save in flight.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from configs.validation import validate

from dream_jax.train import checkpoint as ckpt_lib
from dream_jax.train import metrics as metrics_lib
from dream_jax.train import optim, sharding
from dream_jax.train import workdir as workdir_lib
from dream_jax.train.components import Components
from dream_jax.train.predict import make_predict_fns
from dream_jax.train.step import init_state, make_train_step


class NonFiniteError(FloatingPointError):
  pass


def warn_accumulation(config) -> None:
  """Accumulation with a contrastive loss is allowed (validated) but changes the objective."""
  a = int(config.grad_accum_steps)
  micro = config.batch_size // a
  if a > 1 and config.loss.w_contrastive > 0:
    logging.warning("Gradient accumulation x%d with a contrastive loss: %d negatives per "
                    "query instead of %d, BN statistics and gates per micro-batch.", a, micro,
                    config.batch_size)


class Trainer:
  """Builds everything for `config` on the current devices; `run(workdir)` trains."""

  def __init__(self, config, *, devices=None):
    self.config = config
    validate(config)
    warn_accumulation(config)
    self.mesh = sharding.make_mesh(config, devices)
    self.components = Components(config)
    self.tx = optim.make_optimizer(config)
    if sharding.is_compile_only(self.mesh):
      # AOT (dream_jax.tools.aot): compile-only devices run nothing, so the frozen params
      # are shapes with shardings; `train_step.trace(...)` accepts them like arrays.
      self.frozen = sharding.abstract(self.components.frozen_shapes(),
                                      sharding.replicated(self.mesh))
    else:
      with jax.set_mesh(self.mesh):
        self.frozen = jax.device_put(self.components.init_frozen(),
                                     sharding.replicated(self.mesh))
    init = lambda: init_state(self.components, self.tx, int(config.seed), config.rng_impl)
    self.state_shapes = jax.eval_shape(init)
    self.state_sharding = sharding.tree_shardings(self.mesh, self.state_shapes,
                                                  config.mesh.param_rules)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    self.train_step = jax.jit(
        make_train_step(config, self.components.objective, self.tx),
        in_shardings=(self.state_sharding, sharding.replicated(self.mesh),
                      sharding.batch_sharding(self.mesh)),
        out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
        donate_argnums=(0,))

  # ------------------------------------------------------------------ state
  def abstract_state(self):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        self.state_shapes, self.state_sharding)

  def fresh_state(self):
    with jax.set_mesh(self.mesh):
      return self._init()

  def init_from(self, path: str, state: dict) -> dict:
    """Params + BN statistics from another run's checkpoint; EMA = those params."""
    directory, step = ckpt_lib.resolve_dir(path)
    other = ckpt_lib.Checkpointer(directory, read_only=True)
    step = other.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"config.ckpt.init_from={path!r}: no checkpoint found")
    abstract = self.abstract_state()
    params, stats = other.restore_params(step, abstract["params"], abstract["batch_stats"])
    logging.info("Initialised params from %s step %d", directory, step)
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                   out_shardings=self.state_sharding["ema_params"])
    return dict(state, params=params, batch_stats=stats, ema_params=copy(params))

  # -------------------------------------------------------------------- run
  def run(self, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Trains to config.total_steps (resuming when W/checkpoints has a step); returns the
    last row of metrics written (evaluator results included).

    Nothing is written to `workdir` before the config comparison (`workdir.check_config`),
    the data sources and the checkpoint restore have passed. Every step's evaluations and
    samples run right after its checkpoint; a rerun completes those of the resumed step that
    are missing (final ones included) and writes W/done.json when the run is complete.
    """
    config = self.config
    t_run = time.perf_counter()
    workdir = os.path.abspath(workdir)
    changed = workdir_lib.check_config(config, workdir,
                                       allow_config_change=allow_config_change)
    total = int(config.total_steps)
    done = workdir_lib.read_done(workdir)
    ckpt = self._checkpointer(workdir)
    latest = ckpt.latest_step()
    if done is not None and done.get("step") == total and latest == total:
      ckpt.close()
      print(f"{workdir}: run already complete at step {total} (done.json); nothing to do.",
            flush=True)
      rows = metrics_lib.read_metrics(workdir)
      self.final_state = None
      return {k: v for r in rows if r.get("step") == total for k, v in r.items()}
    from dream_jax.data import make_dataset
    train_data = make_dataset(config, "train")
    data_state = None
    if latest is not None:
      if latest > total:
        raise workdir_lib.WorkdirError(
            f"{ckpt.directory} has step {latest} > config.total_steps={total}; nothing was "
            "written")
      state, data_state = ckpt.restore(latest, self.abstract_state())
      if jax.process_index() == 0:
        print(f"resumed from {ckpt.directory}/{latest}", flush=True)
    else:
      state = self.fresh_state()
      if config.ckpt.init_from:
        state = self.init_from(config.ckpt.init_from, state)
    # Every check passed: from here on the workdir is this run's.
    if jax.process_index() == 0:
      workdir_lib.write_config(config, workdir)
      workdir_lib.clear_done(workdir)
    if changed:
      print(f"{workdir}: resuming with changed non-structural keys: " + ", ".join(changed),
            flush=True)
    if latest is not None:
      logging.info("Resumed from %s/%d", ckpt.directory, latest)
    writer = metrics_lib.MetricWriter(workdir, keep_upto=-1 if latest is None else latest)
    first_step = int(state["step"])
    it = train_data.iterator(data_state or None)

    predict_fns = make_predict_fns(self.components, self.frozen, self.mesh)
    evaluators = self._evaluators(workdir, predict_fns)
    progress = metrics_lib.Progress(total, config.batch_size, first_step)
    last_row = {}

    def run_evals(step, final, only=None):
      from dream_jax.evaluators import FeatureCache
      rows = {}
      variables = ckpt_lib.ema_variables(state)
      cache = FeatureCache()   # features shared by this step's evaluators only
      for name, (ev, every, at_start) in evaluators.items():
        if not _eval_due(step, final, every, at_start) or (only is not None and name not in only):
          continue
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh):
          res = ev.run(variables, step=step, cache=cache)
        rows.update({f"{name}/{k}": v for k, v in res.items()})
        rows[f"{name}/seconds"] = time.perf_counter() - t0
      if rows:
        r = writer.write(step, rows)
        progress.print_eval(step, r)
        last_row.update(r)

    sample_every = int(config.sampling.every)
    prompts = [p for p in config.sampling.prompts if p]

    def samples_path(step):
      return os.path.join(workdir, "samples", f"step_{step:06d}.png")

    def write_samples(step):
      """Grid of `config.sampling.prompts` (plain decoding, EMA weights) -> W/samples/."""
      fn = predict_fns.get("sample")
      if fn is None or not prompts:
        return
      variables = ckpt_lib.ema_variables(state)
      with jax.set_mesh(self.mesh):
        out = fn(variables, None, prompts, jax.random.key(int(config.seed)))
      if jax.process_index() == 0:
        from dream_jax.utils import images as image_lib
        _save_png_atomic(image_lib, image_lib.captioned_grid(np.asarray(out["images"]), prompts,
                                                             ncol=4), samples_path(step))

    def after_checkpoint(step, only_missing=False):
      """The evaluations and samples of `step` (all of them at the end of the run)."""
      final = step == total
      names = None
      if only_missing:
        names = _missing_evals(metrics_lib.read_metrics(workdir), step, evaluators)
      if names is None or names:
        run_evals(step, final, only=names)
      if (final or (sample_every and step % sample_every == 0)) and not (
          only_missing and os.path.exists(samples_path(step))):
        write_samples(step)

    try:
      if first_step == 0:
        with progress.paused():
          run_evals(0, final=total == 0)
      elif first_step == total or (sample_every and first_step % sample_every == 0) or any(
          _eval_due(first_step, False, e, a) for _, e, a in evaluators.values()):
        missing = _missing_evals(metrics_lib.read_metrics(workdir), first_step, evaluators)
        if first_step == total:
          print(f"{workdir}: the previous run stopped after its final checkpoint (step "
                f"{total}) without finishing; completing the final evaluation and samples"
                + (f" ({', '.join(missing)})" if missing else "") + ".", flush=True)
        after_checkpoint(first_step, only_missing=True)

      pending_finite = None   # the previous step's flag, read one step late (keeps dispatch async)
      step = first_step
      log_every = max(1, int(config.log_every))
      t_start = time.perf_counter()
      with jax.set_mesh(self.mesh):
        while step < total:
          batch = sharding.global_batch(self.mesh, next(it))
          state, m = self.train_step(state, self.frozen, batch)
          step += 1
          ckpt.check_saves()    # a failed background save stops the run here, named once
          if pending_finite is not None and not bool(pending_finite[1]):
            raise self._nonfinite(pending_finite[0], ckpt)
          pending_finite = (step, m["finite"])
          is_last = step == total
          if step % log_every == 0 or is_last or step == first_step + 1:
            m = jax.device_get(m)
            if not bool(m["finite"]):
              raise self._nonfinite(step, ckpt)
            row = {k: float(v) for k, v in m.items() if k != "finite"}
            row.update(progress.rates(step))
            row["elapsed_sec"] = time.perf_counter() - t_start
            # Records the pipeline could not use, by reason (this host's counts).
            row.update({f"data_skipped/{k}": float(v)
                        for k, v in train_data.skip_counts().items()})
            last_row.update(writer.write(step, row))
            progress.print(step, row)
          if (config.ckpt.every and step % config.ckpt.every == 0) or is_last:
            if not bool(m["finite"]):     # never checkpoint a non-finite state
              raise self._nonfinite(step, ckpt)
            with progress.paused():   # the ETA counts step time only
              ckpt.save(step, state, it.get_state(), extra_meta=dict(total_steps=total))
          if is_last or any(every and step % every == 0 for _, every, _ in evaluators.values()) \
              or (sample_every and step % sample_every == 0):
            with progress.paused():
              after_checkpoint(step)
    except BaseException:
      # A crash (an evaluator, the data, Ctrl-C) must not lose the checkpoint being written:
      # finish the in-flight save before the exception ends the process.
      _finish_saves(ckpt)
      raise
    ckpt.close()
    if step == total and jax.process_index() == 0:
      workdir_lib.write_done(workdir, total)
    _print_skips(train_data)
    writer.close()
    self.final_state = state
    if jax.process_index() == 0:
      from dream_jax.train import summary
      summary.finish(workdir, progress, time.perf_counter() - t_run, ckpt.directory)
    return last_row

  def _checkpointer(self, workdir: str) -> ckpt_lib.Checkpointer:
    c = self.config.ckpt
    return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.keep,
                                 permanent_every=c.permanent_every)

  def _nonfinite(self, step, ckpt) -> NonFiniteError:
    ckpt.wait()
    good = ckpt.latest_step()
    where = (f"The last good checkpoint is step {good} in {ckpt.directory}" if good is not None
             else f"No checkpoint was written yet ({ckpt.directory} is empty)")
    return NonFiniteError(f"non-finite loss or gradient at step {step}; stopping. {where} "
                          "(the non-finite state was not written).")

  def _evaluators(self, workdir, predict_fns):
    """name -> (evaluator, every, at_start) for `config.evals` (configs/evaluators.py)."""
    from dream_jax.evaluators import EvalContext, build_evaluator
    context = EvalContext(self.config, workdir)
    return {name: (build_evaluator(ec, predict_fns, context), int(ec.every), bool(ec.at_start))
            for name, ec in self.config.evals.items()}


def _eval_due(step: int, final: bool, every: int, at_start: bool) -> bool:
  return bool((step == 0 and at_start) or final or (every and step % every == 0))


def _missing_evals(rows: list[dict], step: int, evaluators: dict) -> list[str]:
  """Evaluators with no '<name>/...' value in the rows of `step` (a run killed mid-way)."""
  have = {k.split("/")[0] for r in rows if r.get("step") == step for k in r if "/" in k}
  return [name for name in evaluators if name not in have]


def _save_png_atomic(image_lib, grid: np.ndarray, path: str) -> None:
  """PNG through a temporary file + rename: an existing file is always a complete grid."""
  tmp = f"{path}.tmp{os.getpid()}.png"
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image_lib.save_png(grid, tmp)
  os.replace(tmp, path)


def _finish_saves(ckpt) -> None:
  try:
    ckpt.manager.wait_until_finished()
  except Exception as e:   # noqa: BLE001  the original error is the one to report
    logging.error("checkpoint save in flight failed too: %s", e)


def _print_skips(train_data) -> None:
  counts = train_data.skip_counts()
  if counts and jax.process_index() == 0:
    print("data: skipped records by reason (this host): "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)


def train(config, workdir: str, *, devices=None, allow_config_change: bool = False) -> dict:
  """Builds the Trainer and runs it (see `Trainer.run`)."""
  return Trainer(config, devices=devices).run(workdir, allow_config_change=allow_config_change)
