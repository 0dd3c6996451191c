"""Does the decoder's condition z learn to depend on the image and the caption?

  python -m dream_jax.tools.condition_probe --config=configs/demo.py --readout=mse --steps=400
  python -m dream_jax.tools.condition_probe --config=configs/demo.py --readout=diffusion

A diagnostic for the generation path, independent of the trainer. It trains encoder,
condition path and decoder at ONE fixed mask ratio (`--ratio`, per-sample random positions)
with AdamW at the config's learning rate (constant, no contrastive loss) and one of two
readouts of the masked tokens' z:
  * 'diffusion': the model's own diffusion head and loss (what the trainer uses);
  * 'mse': a linear map z -> token trained by plain MSE (no diffusion head).
Every `--every` steps it prints, on one held-out batch with ONE set of masked positions
shared by every sample: the readout loss with each sample's own z, with the NEXT sample's z
(`other`), their relative gap, and the spread of z across the batch at the masked
positions (relative to z's rms). A gap near 0 means z says nothing about this particular
image and caption.

On the CPU demo config (README, "Why generation failed") both readouts first collapse z to
the per-position mean (spread ~0.001). The MSE readout leaves that state after ~150-200
steps (gap 8.6% at step 400); the diffusion readout only starts to at ~300 (0.6% at 400).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from ml_collections import config_flags


def _define_flags():
  """Flags are defined only when run as a program: tests import `make_probe` next to other
  tools that define --config too."""
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_enum("readout", "mse", ["mse", "diffusion"], "What reads z.")
  flags.DEFINE_integer("steps", 400, "Training steps.")
  flags.DEFINE_float("ratio", 0.9, "Mask ratio for training and evaluation.")
  flags.DEFINE_integer("every", 25, "Evaluate every N steps.")
  flags.DEFINE_integer("seed", 0, "Initialisation seed.")


def make_probe(config, readout: str, ratio: float, seed: int = 0):
  """Returns (params, step_fn, eval_fn, batches) for the probe; see the module docstring.

  step_fn(params, opt_state, batch, key) -> (params, opt_state, loss) (jitted);
  eval_fn(params, batch) -> dict(own, other, gap, spread) floats (jitted; shared mask);
  batches: (train iterator of device batches, one held-out batch).
  """
  from dream_jax.data import make_dataset
  from dream_jax.train import sharding
  from dream_jax.train.components import Components
  from dream_jax.train.schedule import peak_learning_rate

  if not 0.0 < ratio < 1.0:
    raise ValueError(f"--ratio must be in (0, 1), got {ratio}")
  comp = Components(config)
  model, obj, tokens_of = comp.model, comp.objective, comp.image_tokens
  variables = model.init(jax.random.key(seed))
  spec = model.spec
  params = dict(net=variables["params"],
                readout=dict(w=jnp.zeros((spec.dec_width, spec.token_dim)),
                             b=jnp.zeros((spec.token_dim,))))
  frozen = comp.init_frozen()
  o = config.optim
  tx = optax.adamw(peak_learning_rate(config), b1=float(o.b1), b2=float(o.b2),
                   weight_decay=0.0)

  def z_of(p, batch, visible):
    var = {"params": p["net"], "batch_stats": variables.get("batch_stats", {})}
    x = tokens_of.to_tokens(frozen.get("vae"), batch, jax.random.key(0), sample=False)
    enc = model.encode_image(var, x, visible)
    ctx, ctx_mask = obj.condition(var, frozen, batch)
    return var, x, model.decode(var, enc.hidden, enc.valid, ctx, ctx_mask)

  def per_token(p, var, x, z, key):
    """[B, L] readout loss of every token."""
    if readout == "mse":
      pred = z @ p["readout"]["w"] + p["readout"]["b"]
      return jnp.mean(jnp.square(pred - x), axis=-1)
    w = jnp.ones(x.shape[:2], jnp.float32) / (x.shape[0] * x.shape[1])
    return model.diffusion_loss(var, z, x, w, key)[1]

  def loss_fn(p, batch, key):
    k_mask, k_diff = jax.random.split(key)
    b, l = batch["clip_ids"].shape[0], spec.seq_len
    visible = jax.random.uniform(k_mask, (b, l)) >= ratio
    var, x, z = z_of(p, batch, visible)
    m = (~visible).astype(jnp.float32)
    return jnp.sum(per_token(p, var, x, z, k_diff) * m) / jnp.maximum(m.sum(), 1.0)

  @jax.jit
  def step_fn(p, opt_state, batch, key):
    loss, g = jax.value_and_grad(loss_fn)(p, batch, key)
    upd, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, upd), opt_state, loss

  @jax.jit
  def eval_fn(p, batch):
    b, l = batch["clip_ids"].shape[0], spec.seq_len
    shared = jax.random.uniform(jax.random.key(7), (1, l)) >= ratio
    visible = jnp.broadcast_to(shared, (b, l))
    var, x, z = z_of(p, batch, visible)
    m = (~visible).astype(jnp.float32)
    # Several (t, noise) draws for the diffusion readout, the same for own and other z.
    draws = 4 if readout == "diffusion" else 1
    def mean_loss(zz):
      tot = sum(per_token(p, var, x, zz, jax.random.key(100 + r)) for r in range(draws))
      return jnp.sum(tot / draws * m) / jnp.maximum(m.sum(), 1.0)
    own, other = mean_loss(z), mean_loss(jnp.roll(z, 1, axis=0))
    rms = jnp.sqrt(jnp.mean(jnp.square(z)))
    spread = jnp.sum(jnp.std(z, axis=0).mean(-1) * m[0]) / jnp.maximum(m[0].sum(), 1.0) / rms
    return dict(own=own, other=other, gap=(other - own) / own, spread=spread)

  # One device: the probe is a small single-process diagnostic.
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  train = (sharding.global_batch(mesh, r) for r in make_dataset(config, "train").iterator())
  held_out = sharding.global_batch(mesh, next(iter(make_dataset(config, "eval").iterator())))
  return params, tx.init(params), step_fn, eval_fn, (train, held_out)


def main(argv):
  del argv
  f = flags.FLAGS
  params, opt_state, step_fn, eval_fn, (train, held_out) = make_probe(
      f.config, f.readout, f.ratio, f.seed)
  t0 = time.time()
  for i in range(f.steps + 1):
    if i % f.every == 0 or i == f.steps:
      r = {k: float(v) for k, v in eval_fn(params, held_out).items()}
      print(f"step {i:5d}  own {r['own']:.4f}  other {r['other']:.4f}  gap "
            f"{100 * r['gap']:5.1f}%  z spread {r['spread']:.3f}  ({time.time() - t0:.0f} s)",
            flush=True)
    if i < f.steps:
      params, opt_state, _ = step_fn(params, opt_state, next(train), jax.random.key(i))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config"])
  app.run(main)
