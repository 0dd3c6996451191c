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

`--layers` also prints, for the text condition and every decoder branch at the masked
positions, the spread across the batch and the rms: it shows WHERE the sample dependence is
lost (on the demo config: the text condition's spread falls 0.52 -> 0.006 in 50 steps while
the cross-attention branches grow to rms ~11, a constant the final LayerNorm divides by).

`--t_min=T` draws the diffusion readout's t from [T, model.num_train_timesteps) only, in
training and evaluation: whether z learns when the head sees only high-noise draws. On the
demo config (1000 timesteps) with `--config.tokenizer.pixel_shift=-0.93 --ratio=0.99`, x0
prediction with the x0 loss reaches a 3.9% gap by step 100 with `--t_min=900` and 0.0%
without; eps prediction stays at 0.0% with either (README, "The diffusion head is the
bottleneck").

  python -m dream_jax.tools.condition_probe --config=configs/demo.py --readout=oracle

`--readout=oracle` trains the diffusion head ALONE with z = a fixed projection of the true
token and prints the rms error of tokens sampled from it (`make_head_probe`): how fast the
head learns to render a token it is told, apart from whether z tells it.
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
  flags.DEFINE_enum("readout", "mse", ["mse", "diffusion", "oracle"],
                    "What reads z; 'oracle': the head alone with z = the true token "
                    "(make_head_probe).")
  flags.DEFINE_integer("steps", 400, "Training steps.")
  flags.DEFINE_float("ratio", 0.9, "Mask ratio for training and evaluation.")
  flags.DEFINE_integer("every", 25, "Evaluate every N steps.")
  flags.DEFINE_integer("seed", 0, "Initialisation seed.")
  flags.DEFINE_bool("layers", False, "Also print the spread/rms of the text condition and "
                    "of every decoder branch at the masked positions (where z collapses).")
  flags.DEFINE_integer("t_min", 0, "Diffusion readout: draw the head's t from [t_min, "
                       "model.num_train_timesteps) in training and evaluation (0 = the full "
                       "range, as the trainer).")


def make_probe(config, readout: str, ratio: float, seed: int = 0, t_min: int = 0):
  """Returns (params, step_fn, eval_fn, batches) for the probe; see the module docstring.

  t_min (diffusion readout only): the head's t is drawn from [t_min,
  model.num_train_timesteps) in training and evaluation (`DreamModel.diffusion_loss`, which
  refuses values outside that range); 0 = the full range, as the trainer.

  step_fn(params, opt_state, batch, key) -> (params, opt_state, loss) (jitted);
  eval_fn(params, batch) -> dict(own, other, gap, spread) floats (jitted; shared mask);
  batches: (train iterator of device batches, one held-out batch).
  """
  from dream_jax.train.components import Components

  if not 0.0 < ratio < 1.0:
    raise ValueError(f"--ratio must be in (0, 1), got {ratio}")
  if t_min and readout != "diffusion":
    raise ValueError(f"--t_min applies to the diffusion readout only, got readout={readout!r}")
  comp = Components(config)
  model, obj, tokens_of = comp.model, comp.objective, comp.image_tokens
  variables = model.init(jax.random.key(seed))
  spec = model.spec
  params = dict(net=variables["params"],
                readout=dict(w=jnp.zeros((spec.dec_width, spec.token_dim)),
                             b=jnp.zeros((spec.token_dim,))))
  frozen = comp.init_frozen()
  tx = _optimizer(config)

  def z_of(p, batch, visible, layers=False):
    var = {"params": p["net"], "batch_stats": variables.get("batch_stats", {})}
    x = tokens_of.to_tokens(frozen.get("vae"), batch, jax.random.key(0), sample=False)
    enc = model.encode_image(var, x, visible)
    ctx, ctx_mask = obj.condition(var, frozen, batch)
    if not layers:
      return var, x, model.decode(var, enc.hidden, enc.valid, ctx, ctx_mask)
    # The same decode, with every submodule's output captured (see `_layer_spreads`).
    z, inter = model.decode(var, enc.hidden, enc.valid, ctx, ctx_mask,
                            capture_intermediates=True)
    return var, x, z, ctx, inter

  def per_token(p, var, x, z, key):
    """[B, L] readout loss of every token."""
    if readout == "mse":
      pred = z @ p["readout"]["w"] + p["readout"]["b"]
      return jnp.mean(jnp.square(pred - x), axis=-1)
    w = jnp.ones(x.shape[:2], jnp.float32) / (x.shape[0] * x.shape[1])
    return model.diffusion_loss(var, z, x, w, key, t_min=t_min)[1]

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
    var, x, z, ctx, inter = z_of(p, batch, visible, layers=True)
    m = (~visible).astype(jnp.float32)
    # Several (t, noise) draws for the diffusion readout, the same for own and other z.
    draws = 4 if readout == "diffusion" else 1
    def mean_loss(zz):
      tot = sum(per_token(p, var, x, zz, jax.random.key(100 + r)) for r in range(draws))
      return jnp.sum(tot / draws * m) / jnp.maximum(m.sum(), 1.0)
    own, other = mean_loss(z), mean_loss(jnp.roll(z, 1, axis=0))
    rms = jnp.sqrt(jnp.mean(jnp.square(z)))
    spread = jnp.sum(jnp.std(z, axis=0).mean(-1) * m[0]) / jnp.maximum(m[0].sum(), 1.0) / rms
    out = dict(own=own, other=other, gap=(other - own) / own, spread=spread)
    out.update(_layer_spreads(ctx, inter, ~shared[0], spec.buffer_size, spec.dec_depth))
    return out

  return params, tx.init(params), step_fn, eval_fn, _batches(config)


def _optimizer(config):
  """Adam at the config's peak learning rate, constant, no weight decay (both probes); the
  diffusion head's step is scaled by optim.head_lr_mult, as in the trainer."""
  from dream_jax.train import optim
  from dream_jax.train.schedule import peak_learning_rate
  o = config.optim
  lr, mult = peak_learning_rate(config), float(o.head_lr_mult)
  return optax.chain(optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2)),
                     optax.stateless(lambda updates, params: optim.apply_lr(updates, lr, mult)))


def _batches(config):
  """(train iterator of device batches, one held-out batch) on ONE device: the probes are
  small single-process diagnostics."""
  from dream_jax.data import make_dataset
  from dream_jax.train import sharding
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  train = (sharding.global_batch(mesh, r) for r in make_dataset(config, "train").iterator())
  held_out = sharding.global_batch(mesh, next(iter(make_dataset(config, "eval").iterator())))
  return train, held_out


def make_head_probe(config, seed: int = 0):
  """The diffusion head alone, given an ORACLE condition: z = x0 @ P, a fixed random
  projection of the token it must produce (so z carries everything about the token).

  Trains only the head (the model's own head, loss, noise schedule, `diffusion_batch_mul`,
  Adam at the config's learning rate times optim.head_lr_mult) on every token of the
  training batches, and samples the held-out batch's tokens from their oracle z with the
  config's sampling chain (temperature 1, no CFG, the config's clip_denoised). It separates
  "can the head learn to render a token it is told" from "does z tell it" (`make_probe`).

  Returns (params, opt_state, step_fn, eval_fn, batches) like `make_probe`; eval_fn(params,
  batch) -> dict(loss, err, err_fg, err_bg, good): the held-out loss, the rms error of the
  sampled tokens against the true ones over all tokens, over foreground tokens (farther than
  0.05 rms from the batch's median token, i.e. not background) and the rest, and the share
  of tokens sampled within 0.2 rms.
  """
  from dream_jax.train.components import Components

  comp = Components(config)
  model, tokens_of = comp.model, comp.image_tokens
  variables = model.init(jax.random.key(seed))
  spec = model.spec
  proj = jax.random.normal(jax.random.key(seed + 1), (spec.token_dim, spec.dec_width))
  proj = proj / jnp.sqrt(spec.token_dim)
  frozen = comp.init_frozen()
  # Keyed by 'diffloss' like in the model, so optim.head_lr_mult applies as in training.
  params = {"diffloss": variables["params"]["diffloss"]}
  tx = _optimizer(config)
  clip = config.sampling.get("clip_denoised")

  def var_of(p):
    return {"params": dict(variables["params"], **p),
            "batch_stats": variables.get("batch_stats", {})}

  def tokens(batch):
    return tokens_of.to_tokens(frozen.get("vae"), batch, jax.random.key(0), sample=False)

  def loss_fn(p, x, key):
    w = jnp.ones(x.shape[:2], jnp.float32) / (x.shape[0] * x.shape[1])
    return model.diffusion_loss(var_of(p), x @ proj, x, w, key)[0]

  @jax.jit
  def step_fn(p, opt_state, batch, key):
    loss, g = jax.value_and_grad(loss_fn)(p, tokens(batch), key)
    upd, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, upd), opt_state, loss

  @jax.jit
  def eval_fn(p, batch):
    x = tokens(batch)
    loss = loss_fn(p, x, jax.random.key(100))
    flat = x.reshape(-1, x.shape[-1])
    sample = model.diffusion_sample(var_of(p), flat @ proj, jax.random.key(101),
                                    temperature=1.0)
    if clip is not None:   # diffusion_sample clips inside the chain; the output too
      sample = jnp.clip(sample, -clip, clip)
    err = jnp.sqrt(jnp.mean(jnp.square(sample - flat), axis=-1))
    fg = jnp.sqrt(jnp.mean(jnp.square(flat - jnp.median(flat, axis=0)), axis=-1)) > 0.05
    def mean_where(v, m):
      return jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1)
    return dict(loss=loss, err=err.mean(), err_fg=mean_where(err, fg),
                err_bg=mean_where(err, ~fg), good=jnp.mean(err < 0.2))

  return params, tx.init(params), step_fn, eval_fn, _batches(config)


def _spread_rms(a, keep=None):
  """(std across the batch / rms) and rms of a [B, L, D] activation, over positions `keep`."""
  a = a.astype(jnp.float32)
  w = jnp.ones(a.shape[1]) if keep is None else keep.astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  rms = jnp.sqrt(jnp.sum(jnp.mean(jnp.square(a), axis=(0, 2)) * w) / n)
  return jnp.sum(jnp.std(a, axis=0).mean(-1) * w) / n / jnp.maximum(rms, 1e-12), rms


def _layer_spreads(ctx, inter, masked, buffer_size: int, depth: int) -> dict:
  """Where z loses its dependence on the sample: 'layers/<name>/{spread,rms}' for the text
  condition ctx (all positions) and, at the masked image positions, the decoder's input and
  each block's self-attention, cross-attention and MLP outputs (the residual branches) and the
  final LayerNorm. A branch whose rms grows while its spread falls is adding a large
  sample-independent constant that the final LayerNorm then divides the sample's part by.
  """
  keep = jnp.concatenate([jnp.zeros((buffer_size,), bool), masked])
  out = {}
  for name in layer_names(depth):
    if name == "ctx":
      a, k = ctx, None
    elif name.startswith("block"):
      i, branch = name[len("block"):].split(".")
      a, k = inter[f"decoder_blocks_{i}"][branch]["__call__"][0], keep
    else:
      a, k = inter[{"decoder_in": "decoder_proj_ln"}.get(name, name)]["__call__"][0], keep
    out[f"layers/{name}/spread"], out[f"layers/{name}/rms"] = _spread_rms(a, k)
  return out


def layer_names(depth: int) -> list:
  """The rows of the per-layer report, in the order the decoder computes them."""
  return (["ctx", "decoder_in"]
          + [f"block{i}.{n}" for i in range(depth) for n in ("self_attn", "cross_attn", "mlp")]
          + ["decoder_norm"])


def main(argv):
  del argv
  f = flags.FLAGS
  if f.readout == "oracle":
    if f.t_min:
      raise ValueError("--t_min applies to the diffusion readout only")
    params, opt_state, step_fn, eval_fn, (train, held_out) = make_head_probe(f.config, f.seed)
  else:
    params, opt_state, step_fn, eval_fn, (train, held_out) = make_probe(
        f.config, f.readout, f.ratio, f.seed, t_min=f.t_min)
  t0 = time.time()
  for i in range(f.steps + 1):
    if i % f.every == 0 or i == f.steps:
      r = {k: float(v) for k, v in eval_fn(params, held_out).items()}
      if f.readout == "oracle":
        print(f"step {i:5d}  loss {r['loss']:.4f}  sampled-token rms error {r['err']:.3f} "
              f"(foreground {r['err_fg']:.3f}, background {r['err_bg']:.3f}), within 0.2: "
              f"{r['good']:.3f}  ({time.time() - t0:.0f} s)", flush=True)
        continue
      print(f"step {i:5d}  own {r['own']:.4f}  other {r['other']:.4f}  gap "
            f"{100 * r['gap']:5.1f}%  z spread {r['spread']:.3f}  ({time.time() - t0:.0f} s)",
            flush=True)
      if f.layers:
        names = layer_names(f.config.model.dec_depth)
        print("    spread/rms  " + "  ".join(
            f"{n} {r[f'layers/{n}/spread']:.3f}/{r[f'layers/{n}/rms']:.2f}" for n in names),
            flush=True)
    if i < f.steps:
      params, opt_state, _ = step_fn(params, opt_state, next(train), jax.random.key(i))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config"])
  app.run(main)
