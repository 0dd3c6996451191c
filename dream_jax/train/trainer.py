"""The one trainer: any config, from a laptop CPU to a TPU pod (big_vision/train.py style).

Order of events in `train(config, workdir)`:
  1. mesh from config.mesh ('data' x 'fsdp'); W/config.json written (resolved config);
  2. state shapes by `jax.eval_shape`, shardings by the FSDP rule, state created by a jitted
     init with `out_shardings` (never materialised on one device);
  3. resume from the latest W/checkpoints/<step> if any (state, EMA + BN stats, data
     iterator), else `ckpt.init_from`, else fresh;
  4. loop: global batch -> donated jitted step -> metrics (process 0) -> evaluators at step 0,
     every `evals.<name>.every` steps and at the end -> sample grids of
     `sampling.prompts` every `sampling.every` steps and at the end (W/samples/step_*.png)
     -> checkpoints every `ckpt.every` and at the end. A non-finite loss or gradient stops
     the run with an error; the state that produced it is never written, so the last good
     checkpoint stays the latest.
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dream_jax.train import checkpoint as ckpt_lib
from dream_jax.train import metrics as metrics_lib
from dream_jax.train import optim, sharding
from dream_jax.train.components import Components
from dream_jax.train.predict import make_predict_fns
from dream_jax.train.step import init_state, make_train_step


class NonFiniteError(FloatingPointError):
  pass


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
      f.write(config.to_json(indent=2))
    os.replace(tmp, os.path.join(workdir, "config.json"))


def check_accumulation(config) -> None:
  """The micro-batch must keep whole masking groups (gates are per group)."""
  a = int(config.grad_accum_steps)
  micro = config.batch_size // a
  if micro % config.masking.group_size:
    raise ValueError(f"config.grad_accum_steps={a}: micro-batch {micro} is not divisible by "
                     f"masking.group_size={config.masking.group_size}")
  if a > 1 and config.loss.w_contrastive > 0:
    logging.warning("Gradient accumulation x%d with a contrastive loss: %d negatives per "
                    "query instead of %d, BN statistics and gates per micro-batch.", a, micro,
                    config.batch_size)


class Trainer:
  """Builds everything for `config` on the current devices; `run(workdir)` trains."""

  def __init__(self, config, *, devices=None):
    self.config = config
    check_accumulation(config)
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
  def run(self, workdir: str) -> dict:
    """Trains to config.total_steps (resuming when W/checkpoints has a step); returns the
    last row of metrics written (evaluator results included)."""
    config = self.config
    workdir = os.path.abspath(workdir)
    write_config(config, workdir)
    writer = metrics_lib.MetricWriter(workdir)
    c = config.ckpt
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.keep,
                                 permanent_every=c.permanent_every)
    from dream_jax.data import make_dataset
    train_data = make_dataset(config, "train")
    eval_data = make_dataset(config, "eval") if len(config.evals) else None

    latest = ckpt.latest_step()
    data_state = None
    if latest is not None:
      state, data_state = ckpt.restore(latest, self.abstract_state())
      logging.info("Resumed from %s/%d", ckpt.directory, latest)
    else:
      state = self.fresh_state()
      if c.init_from:
        state = self.init_from(c.init_from, state)
    first_step = int(state["step"])
    it = train_data.iterator(data_state or None)

    predict_fns = make_predict_fns(self.components, self.frozen, self.mesh)
    evaluators = self._evaluators(workdir)
    total = int(config.total_steps)
    progress = metrics_lib.Progress(total, config.batch_size, first_step)
    last_row = {}

    def run_evals(step, final):
      rows = {}
      variables = ckpt_lib.ema_variables(state)
      for name, (ev, every, at_start) in evaluators.items():
        due = (step == 0 and at_start) or final or (every and step % every == 0)
        if not due:
          continue
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh):
          res = ev.run(predict_fns, eval_data, variables, step=step)
        rows.update({f"{name}/{k}": v for k, v in res.items()})
        rows[f"{name}/seconds"] = time.perf_counter() - t0
      if rows:
        r = writer.write(step, rows)
        logging.info("eval step %d: %s", step, json.dumps(r))
        print(f"eval step {step}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                 else f"{k} {v}" for k, v in r.items()),
              flush=True)
        last_row.update(r)

    sample_every = int(config.sampling.every)
    prompts = [p for p in config.sampling.prompts if p]

    def write_samples(step):
      """Grid of `config.sampling.prompts` (plain decoding, EMA weights) -> W/samples/."""
      fn = predict_fns.get("sample")
      if fn is None or not prompts:
        return
      variables = ckpt_lib.ema_variables(state)
      with jax.set_mesh(self.mesh):
        out = fn(variables, None, prompts, jax.random.key(int(config.seed)))
      if jax.process_index() == 0:
        from dream_jax.sampling import images as image_lib
        path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image_lib.save_png(image_lib.make_grid(np.asarray(out["images"])), path)

    if first_step == 0:
      run_evals(0, final=total == 0)

    pending_finite = None   # the previous step's flag, read one step late (keeps dispatch async)
    stop_after = int(config.get("debug_stop_after", 0) or 0)
    step = first_step
    log_every = max(1, int(config.log_every))
    t_start = time.perf_counter()
    with jax.set_mesh(self.mesh):
      while step < total:
        batch = sharding.global_batch(self.mesh, next(it))
        state, m = self.train_step(state, self.frozen, batch)
        step += 1
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
        if (c.every and step % c.every == 0) or is_last:
          if not bool(m["finite"]):     # never checkpoint a non-finite state
            raise self._nonfinite(step, ckpt)
          ckpt.save(step, state, it.get_state(), extra_meta=dict(total_steps=total))
        if stop_after and step - first_step >= stop_after:
          # Test hook: die like a preempted job (no final checkpoint, no cleanup).
          ckpt.wait()
          os.kill(os.getpid(), signal.SIGKILL)
        if not is_last and any(every and step % every == 0
                               for _, every, _ in evaluators.values()):
          run_evals(step, final=False)
        if not is_last and sample_every and step % sample_every == 0:
          write_samples(step)
      if step == total and total > first_step:
        run_evals(step, final=True)
        write_samples(step)
    ckpt.close()
    writer.close()
    self.final_state = state
    return last_row

  def _nonfinite(self, step, ckpt) -> NonFiniteError:
    ckpt.wait()
    good = ckpt.latest_step()
    return NonFiniteError(f"non-finite loss or gradient at step {step}; stopping. The last "
                          f"good checkpoint is step {good} in {ckpt.directory} (the "
                          f"non-finite state was not written).")

  def _evaluators(self, workdir):
    from dream_jax.evaluators import get_evaluator
    out = {}
    for name, ec in self.config.evals.items():
      cls = get_evaluator(ec.kind)
      out[name] = (cls(ec, config=self.config, workdir=workdir), int(ec.get("every", 0) or 0),
                   bool(ec.get("at_start", True)))
    return out


def train(config, workdir: str, *, devices=None) -> dict:
  return Trainer(config, devices=devices).run(workdir)
