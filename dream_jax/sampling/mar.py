"""MAR decoding as one jittable program: the step loop is a `lax.fori_loop` over preallocated
state (docs/DESIGN.md section 3; reference LTH14/mar `MAR.sample_tokens`, loop structure after
big_vision's GIVT `parallel_decode`).

State (B images, L tokens of dim C): `tokens` [B, L, C] float32 (zeros where not decoded yet)
and one random generation order per image, kept as `order` [B, L] int32 (order[b, r] = the
position revealed r-th from the END: the first `masked_after[s]` entries of the order are the
ones still masked after step s, as MAR's `mask_by_order`) and its inverse `rank` [B, L].
Because every image reveals the same NUMBER of tokens per step (schedule.py), the mask
never needs to be stored: at step s, position p is visible iff rank[p] >= masked_before[s],
and step s reveals the ranks [masked_after[s], masked_before[s]).

One step s (all inside the loop body, no host round trip):
  1. encoder on the visible tokens. The encoder never sees text, so with CFG it runs ONCE on
     the B images and its output is shared by the conditional and unconditional rows (MAR
     runs it on 2B identical rows; same result, half the encoder FLOPs).
     Static lengths: the visible count of step s is a static table entry but the loop index
     is traced, so the token-dropping encoder runs through `bucketed` over
     `bucket_sizes(L, encoder_buckets)` (a `lax.switch`; every branch is compiled, only the
     chosen one runs). The padding this costs is sum_s (bucket(visible_s) - visible_s)
     encoder tokens on top of buffer + visible_s; `benchmarks/sampling.py` prints it.
     With `model.encoder_path == 'masked'` the full-length attention-masked path runs instead
     (buffer + L tokens at every step, no switch).
  2. decoder on [cond rows; uncond rows] (batch 2B with CFG): the condition of each prompt
     and the EMPTY caption's condition, both computed once before the loop. Its text-free
     part (input embedding, first self-attention) runs once per image, and its last block
     computes outputs only at the positions this step reveals (the largest revealed count
     of any step, `n_max`): the head never reads z anywhere else. Same z as the full
     decoder at those positions (tests/test_model_core.py,
     test_decode_condition_rows_and_positions_equal_the_full_decoder).
  3. the newly revealed positions are gathered into a static row count per step: the
     revealed count of step s (<= max over steps) rounded up to one of
     `bucket_sizes(max revealed, head_buckets)`; extra rows are computed and dropped. Sampling all
     L positions and selecting would cost L / revealed_s head rows per useful row (~40x at
     L=256, N=64); one static max size costs N*max/L (~1.75x); buckets cost less (printed
     by the benchmark).
  4. the diffusion head samples those rows with the respaced chain (temperature scales the
     noise of every diffusion step); with CFG the scale of step s is `cfg_scales(...)[s]`
     and both halves share x_t and the noise (MAR `forward_with_cfg`).
  5. the sampled tokens are scattered into `tokens` (padding rows write to a dummy slot).

Randomness: `rng` -> fold_in 0: the orders, fold_in 1: step keys (fold_in(step_key, s) is the
diffusion key of step s). The same (rng, batch shape, options) always gives the same tokens;
SAD phases use the same step keys, so SAD with K=1 is plain decoding.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.models.api import DreamModel
from dream_jax.models.buckets import bucket_sizes, bucketed
from dream_jax.sampling import schedule as sched_lib


class DecodeState(NamedTuple):
  tokens: jax.Array   # [B, L, C] float32, zeros where not decoded yet
  order: jax.Array    # [B, L] int32: the generation order (positions; first = masked longest)
  rank: jax.Array     # [B, L] int32: inverse permutation of `order`


class Cond(NamedTuple):
  """Decoder conditions for B images: ctx [R, Lc, Ddec], mask [R, Lc] with R = 2B under CFG
  (conditional rows, then unconditional rows), R = B without."""
  ctx: jax.Array
  mask: jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Static options of a decoding program (one compiled executable per value + shapes).

  num_steps: N decoding steps; num_diffusion_steps: the head's respacing spec ("100");
  cfg_schedule: 'linear' | 'constant'; guided: run the unconditional branch (cfg != 1);
  encoder_buckets / head_buckets: static sizes for the encoder and the head (see above).
  """
  num_steps: int
  num_diffusion_steps: str
  cfg_schedule: str
  guided: bool
  encoder_buckets: int
  head_buckets: int


def options_from_config(config, **overrides) -> DecodeOptions:
  """DecodeOptions from `config.sampling` (+ overrides); guided = cfg != 1."""
  s = config.sampling
  cfg = float(overrides.pop("cfg", s.cfg))
  kw = dict(num_steps=int(s.num_steps), num_diffusion_steps=str(s.num_diffusion_steps),
            cfg_schedule=str(s.cfg_schedule), guided=cfg != 1.0,
            encoder_buckets=int(s.encoder_buckets), head_buckets=int(s.head_buckets))
  kw.update({k: v for k, v in overrides.items() if k in kw and v is not None})
  return DecodeOptions(**kw)


def init_state(rng, batch: int, seq_len: int, token_dim: int, repeat: int = 1) -> DecodeState:
  """Zero tokens and one random order per image; `repeat` > 1 repeats each order (SAD: the
  K candidates of a prompt share it), rows prompt-major (row = p * repeat + k)."""
  keys = jax.random.split(rng, batch)
  order = jax.vmap(lambda k: jax.random.permutation(k, seq_len))(keys).astype(jnp.int32)
  order = jnp.repeat(order, repeat, axis=0)
  rank = jnp.argsort(order, axis=1).astype(jnp.int32)
  tokens = jnp.zeros((batch * repeat, seq_len, token_dim), jnp.float32)
  return DecodeState(tokens, order, rank)


def visible_mask(state: DecodeState, masked_before) -> jax.Array:
  """[B, L] bool: positions decoded before a step that starts with `masked_before` masked."""
  return state.rank >= masked_before


def step_key(rng, step):
  return jax.random.fold_in(jax.random.fold_in(rng, 1), step)


def order_key(rng):
  return jax.random.fold_in(rng, 0)


class MarDecoder:
  """The decoding loop of one model and one `DecodeOptions` (pure functions, jittable).

  `schedule` is the static reveal schedule (L = model's seq_len, N = options.num_steps).
  """

  def __init__(self, model: DreamModel, options: DecodeOptions):
    self.model, self.opts = model, options
    self.L, self.C = model.spec.seq_len, model.spec.token_dim
    self.schedule = sched_lib.reveal_schedule(self.L, options.num_steps)
    self.masked_path = model.encoder_path == "masked"
    self.enc_sizes = bucket_sizes(self.L, max(1, options.encoder_buckets))
    # Static row counts the per-step revealed count is rounded up to (0-reveal steps use the
    # smallest size with every row masked out).
    self.head_sizes = bucket_sizes(self.schedule.max_revealed, max(1, options.head_buckets))

  # ------------------------------------------------------------------ pieces
  def encode(self, variables, tokens, visible, count):
    """Encoder outputs (hidden [B,S,D], valid [B,S]) for `count` (static or traced) visible
    tokens per image (the same for every image)."""
    m = self.model
    if self.masked_path:
      return m.encode_tokens(variables, tokens, visible)
    if isinstance(count, (int, np.integer)):
      size = int(sched_lib.rounded_up(np.asarray([count]), self.enc_sizes)[0])
      return m.encode_tokens(variables, tokens, visible, num_keep=size)
    return m.encode_tokens(variables, tokens, visible, count=count, sizes=self.enc_sizes)

  def score(self, variables, hidden, valid, text_emb):
    """Cosine [B] of the image embedding (eval BatchNorm) with unit text embeddings [B, E]."""
    emb, _ = self.model.project(variables, hidden, valid, train=False)
    return jnp.sum(emb * text_emb, axis=-1)

  def tables(self, cfg):
    """Per-step tables as device constants: masked_before/after, revealed, visible [N] int32
    and the guidance scale [N] float32 (cfg may be traced)."""
    s = self.schedule
    i32 = lambda a: jnp.asarray(np.asarray(a, np.int32))
    scale = sched_lib.cfg_scales(s, jnp.asarray(cfg, jnp.float32), self.opts.cfg_schedule)
    return dict(masked_before=i32(s.masked_before), masked_after=i32(s.masked_after),
                revealed=i32(s.revealed), visible=i32(s.visible),
                cfg=scale.astype(jnp.float32))

  def step(self, variables, state: DecodeState, cond: Cond, rng, temperature, tab, s,
           on_encode: Optional[Callable] = None, shared: int = 1) -> DecodeState:
    """Decoding step s (traced int32) for B images; see the module docstring.

    shared > 1: the rows come in groups of `shared` identical states and conditions (SAD's
    candidates of one prompt before their first step): the encoder and the decoder run on
    the first row of each group and z is repeated, so the group's rows differ only by the
    head's noise, as when every row is computed."""
    m, L = self.model, self.L
    b = state.tokens.shape[0]
    one = state if shared == 1 else jax.tree.map(lambda a: a[::shared], state)
    visible = visible_mask(one, tab["masked_before"][s])
    hidden, valid = self.encode(variables, one.tokens, visible, tab["visible"][s])
    if on_encode is not None:
      rep = lambda a: a if shared == 1 else jnp.repeat(a, shared, axis=0)
      on_encode(s, rep(hidden), rep(valid))
    # z only where this step reveals: the order's ranks [first, first + count), padded to
    # the largest count (clipped ranks repeat a real position; their rows are dropped).
    first, count = tab["masked_after"][s], tab["revealed"][s]
    ranks = jnp.minimum(first + jnp.arange(self.head_sizes[-1]), L - 1)    # [n_max]
    ctx, ctx_mask = cond if shared == 1 else (cond.ctx[::shared], cond.mask[::shared])
    # [cond rows; uncond rows] share the encoder output and the decoder's text-free part.
    z = m.decode(variables, hidden, valid, ctx, ctx_mask,
                 positions=jnp.take(one.order, ranks, axis=1))           # [R, n_max, Ddec]
    if shared > 1:   # [cond groups; uncond groups] -> every row (rows are group-major)
      z = jnp.repeat(z, shared, axis=0)
    key = step_key(rng, s)
    cfg_s = tab["cfg"][s] if self.opts.guided else None

    def sample(n, tokens, z):
      j = jnp.arange(n)
      pos = jnp.take(state.order, ranks[:n], axis=1)                     # [B, n]
      zr = z[:, :n]                                                      # [R, n, Ddec]
      x = m.diffusion_sample(variables, zr.reshape(-1, zr.shape[-1]), key,
                             temperature=temperature, cfg_scale=cfg_s,
                             num_steps=self.opts.num_diffusion_steps)    # [B*n, C]
      x = x.reshape(b, n, self.C)
      target = jnp.where(j[None, :] < count, pos, L)                     # padding -> dummy
      padded = jnp.concatenate([tokens, jnp.zeros((b, 1, self.C), tokens.dtype)], axis=1)
      padded = padded.at[jnp.arange(b)[:, None], target].set(x)
      return padded[:, :L]

    tokens = bucketed(count, self.head_sizes, sample, state.tokens, z)
    return state._replace(tokens=tokens)

  def run(self, variables, state: DecodeState, cond: Cond, rng, temperature, cfg,
          start: int, stop: int, carry=None, on_encode: Optional[Callable] = None,
          shared_start: int = 1):
    """Steps [start, stop) as one `lax.fori_loop` over preallocated state.

    Without `carry`, returns the new state. With `carry` (any pytree, e.g. a preallocated
    [steps, B] score array) the body calls `on_encode(carry, s, hidden, valid) -> carry`
    right after the encoder of step s, and the loop returns (state, carry).
    shared_start > 1: at `start` the rows are groups of that many identical states (see
    `step`); that step runs once per group before the loop.
    """
    tab = self.tables(cfg)

    def make_body(shared):
      if carry is None:
        return lambda s, st: self.step(variables, st, cond, rng, temperature, tab, s,
                                       shared=shared)

      def body(s, sc):
        st, c = sc
        box = [c]   # the hook runs inside this trace; box carries its result out

        def hook(step, hidden, valid):
          box[0] = on_encode(box[0], step, hidden, valid)

        st = self.step(variables, st, cond, rng, temperature, tab, s, hook, shared=shared)
        return st, box[0]
      return body

    out = state if carry is None else (state, carry)
    if shared_start > 1 and stop > start:
      out = make_body(shared_start)(start, out)
      start += 1
    return jax.lax.fori_loop(start, stop, make_body(1), out)


# ---------------------------------------------------------------- conditions
class TextFns(NamedTuple):
  """The closures a decoding program needs from the run (maskgit style; built by `Sampler`
  from the `Conditioning` and the image tokenizer):

    condition(variables, frozen, batch) -> (ctx [R, Lc, Ddec], mask [R, Lc])
    embed(variables, clip_ids [P, ctx]) -> unit text embeddings [P, E] (the SAD critic)
    detokenize(frozen_vae, tokens [B, L, C]) -> images [B, H, W, 3] in [-1, 1]
  """
  condition: Callable
  embed: Callable
  detokenize: Callable


class PromptCond(NamedTuple):
  """Conditions of P prompts and of the empty caption, before repetition / stacking."""
  ctx: jax.Array      # [P, Lc, Ddec]
  mask: jax.Array     # [P, Lc] bool
  uctx: jax.Array     # [1, Lc, Ddec] (empty caption)
  umask: jax.Array    # [1, Lc] bool


def prompt_cond(fns: TextFns, variables, frozen, batch, uncond, guided: bool) -> PromptCond:
  """Aligner outputs for `batch` (see `decode_plain`) and, when guided, the empty caption
  `uncond` ([1, ...] rows). Computed once per program, outside the step loop."""
  ctx, mask = fns.condition(variables, frozen, batch)
  if guided:
    uctx, umask = fns.condition(variables, frozen, uncond)
    uctx, umask = uctx[:1].astype(ctx.dtype), umask[:1].astype(mask.dtype)
  else:
    uctx, umask = ctx[:0], mask[:0]
  return PromptCond(ctx, mask, uctx, umask)


def expand_cond(pc: PromptCond, guided: bool, repeat: int = 1) -> Cond:
  """Cond for P*repeat images (each prompt repeated, prompt-major): [cond rows; uncond
  rows] (R = 2*P*repeat) when guided, else the P*repeat conditional rows."""
  ctx, mask = jnp.repeat(pc.ctx, repeat, axis=0), jnp.repeat(pc.mask, repeat, axis=0)
  if not guided:
    return Cond(ctx, mask)
  n = ctx.shape[0]
  uctx = jnp.broadcast_to(pc.uctx, (n,) + pc.uctx.shape[1:])
  umask = jnp.broadcast_to(pc.umask, (n,) + pc.umask.shape[1:])
  return Cond(jnp.concatenate([ctx, uctx], 0), jnp.concatenate([mask, umask], 0))


def to_uint8(images):
  """[-1, 1] float -> uint8 [0, 255] (round half away from zero on the scaled value)."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


# ------------------------------------------------------------------- programs
def decode_plain(decoder: MarDecoder, fns: TextFns, variables, frozen, batch, uncond, rng,
                 temperature, cfg) -> dict:
  """Plain MAR decoding of P prompts (jit with `decoder` etc. bound; one executable).

  Args:
    variables: {'params' (EMA), 'batch_stats'}; frozen: {'vae', 'text'} frozen parameters.
    batch: the prompts' text inputs {'clip_ids' [P, ctx] int32, and 'cond_ids'/'cond_mask'
      [P, Lc] as the data pipeline makes them}; uncond: the same keys for the empty caption
      ([1, ...] rows, e.g. `Conditioning.empty`).
    rng: a jax.random key; temperature, cfg: float32 scalars.
  Returns:
    dict(images uint8 [P, H, W, 3], tokens float32 [P, L, C]).
  """
  p = batch["clip_ids"].shape[0]
  guided = decoder.opts.guided
  cond = expand_cond(prompt_cond(fns, variables, frozen, batch, uncond, guided), guided)
  state = init_state(order_key(rng), p, decoder.L, decoder.C)
  state = decoder.run(variables, state, cond, rng, temperature, cfg, 0, decoder.opts.num_steps)
  images = to_uint8(fns.detokenize(frozen.get("vae"), state.tokens))
  return dict(images=images, tokens=state.tokens)
