"""Train state and the jitted update step.

Train state (a plain pytree dict, what is checkpointed):
  step        [] int32        updates done so far
  params      fp32 parameters (compute dtype is the model's `config.compute_dtype`)
  opt_state   optax state of `optim.make_optimizer` (clip -> Adam moments -> decay)
  ema_params  EMA of params (evaluation and sampling use these)
  batch_stats BatchNorm running statistics of the projection MLP (used as they are)
  rng         [2] uint32 raw key; step keys are fold_in(rng, step), so a resumed run draws
              exactly the randomness of an uninterrupted one
Frozen parameters (VAE / T5) are a separate, replicated argument and never checkpointed.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import optax

from dream_jax.train import optim
from dream_jax.train.schedule import TrainSchedule


def init_state(components, tx, rng_seed: int, rng_impl: str) -> dict:
  """Fresh train state (call under jit with out_shardings; see Trainer). `rng_impl`
  (config.rng_impl) is the PRNG of the run's key; every key derived from it inherits it,
  so no process-global PRNG setting is needed."""
  key = jax.random.key(rng_seed, impl=rng_impl)
  k_init, k_run = jax.random.split(key)
  variables = components.model.init(k_init)
  params = variables["params"]
  return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
              ema_params=jax.tree.map(jnp.copy, params),
              batch_stats=variables.get("batch_stats", {}),
              rng=jax.random.key_data(k_run))


def micro_batches(batch: dict, accum: int) -> dict:
  """[B, ...] -> [accum, B/accum, ...]; micro-batch i takes rows i, i+accum, ... so every
  device keeps an equal share of each micro-batch (rows are laid out contiguously)."""
  def split(x):
    b = x.shape[0]
    return x.reshape((b // accum, accum) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(config, objective, tx):
  """`train_step(state, frozen, batch) -> (new_state, metrics)` (pure; jit it).

  One schedule call gives both the learning rate and the mask-ratio centre of this step.
  With grad_accum_steps = A > 1 the global batch is split into A micro-batches run in a
  `lax.scan`: gradients and metrics are averaged, BatchNorm statistics are carried from one
  micro-batch to the next, and every loss term (contrastive negatives, group gates, BN batch
  statistics) is per micro-batch -- `negatives` in the metrics is then B / A.
  """
  schedule = TrainSchedule(config)
  accum = int(config.grad_accum_steps)
  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def train_step(state, frozen, batch):
    step = state["step"]
    sched = schedule(step)
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl=config.rng_impl), step)
    params = state["params"]
    if accum == 1:
      (loss, (stats, metrics)), grads = grad_fn(params, state["batch_stats"], frozen, batch,
                                                key, sched["mask_center"])
    else:
      def body(carry, xs):
        g_sum, stats = carry
        i, mb = xs
        (_, (stats, m)), g = grad_fn(params, stats, frozen, mb, jax.random.fold_in(key, i),
                                     sched["mask_center"])
        return (jax.tree.map(jnp.add, g_sum, g), stats), m

      zeros = jax.tree.map(jnp.zeros_like, params)
      (g_sum, stats), ms = jax.lax.scan(
          body, (zeros, state["batch_stats"]), (jnp.arange(accum), micro_batches(batch, accum)))
      grads = jax.tree.map(lambda g: g / accum, g_sum)
      metrics = jax.tree.map(lambda m: m.mean(0), ms)
      loss = metrics["loss"]

    grad_norm = optim.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, optim.apply_lr(updates, sched["lr"],
                                                             config.optim.head_lr_mult))
    ema = optim.update_ema(state["ema_params"], new_params, optim.ema_decay(config, step))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = dict(metrics, lr=sched["lr"], grad_norm=grad_norm,
                   param_norm=optim.global_norm(new_params), finite=finite,
                   # InfoNCE negatives per query: the (micro-)batch, 0 without the loss.
                   negatives_effective=jnp.float32(
                       config.batch_size // accum if config.loss.w_contrastive > 0 else 0))
    new_state = dict(step=step + 1, params=new_params, opt_state=opt_state, ema_params=ema,
                     batch_stats=stats, rng=state["rng"])
    return new_state, metrics

  return train_step
