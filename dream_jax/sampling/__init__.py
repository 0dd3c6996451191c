"""Text-to-image sampling: MAR decoding, CFG, Semantically Aligned Decoding, best-of-K.

  schedule.py  MAR's cosine reveal schedule with its clamps, CFG scales, SAD step from share
  mar.py       the jittable decoding loop (`MarDecoder`) and plain decoding
  sad.py       SAD (K candidates, select at step T, finish the winners) and best-of-K

`Sampler` is the host-side entry point: it tokenizes prompts (with the `tokenize` callable
its builder gives it, the data pipeline's caption tokenization; the empty caption of the
`Conditioning` is the unconditional branch), keeps one jitted program per
(static options, prompt count), and returns numpy arrays. `make_predict_fns` exposes it to
the trainer and evaluators as named predict functions:

  sample(variables, frozen, prompts, rng, **overrides)      plain decoding
  sample_sad(variables, frozen, prompts, rng, **overrides)  SAD
  best_of_k(variables, frozen, prompts, rng, **overrides)   best-of-K (internal rerank, or
                                                            `scorer=` an external one)
each -> dict(images uint8 [P, H, W, 3], ...). `variables` are the EMA parameters with the
BatchNorm running statistics ({'params', 'batch_stats'}); `frozen` = {'vae', 'text'}.

Overrides (defaults from config.sampling): cfg, temperature, num_steps,
num_diffusion_steps, cfg_schedule, encoder_buckets, head_buckets; SAD: num_candidates,
sad_step | sad_share, critic ('final' | 'mean'), return_candidates; best-of-K:
num_candidates, scorer (callable(images uint8 [M,H,W,3], prompts list[str] of length M)
-> [M] scores), return_candidates.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.sampling import mar, sad
from dream_jax.sampling import schedule as sched_lib

__all__ = ["Sampler", "make_predict_fns", "mar", "sad", "sched_lib"]

_DECODE_KEYS = ("num_steps", "num_diffusion_steps", "cfg_schedule", "encoder_buckets",
                "head_buckets")


class Sampler:
  """Host-side sampler of one model/config (see the module docstring).

  Args:
    model: DreamModel; config: the run config (its sampling section gives the defaults).
    image_tokens: tokens <-> images (`from_tokens(frozen_vae, tokens)`).
    conditioning: the run's `dream_jax.conditioning.Conditioning` (its `empty` caption is
      the unconditional input).
    tokenize: prompts list[str] -> {'clip_ids' [P, ctx], 'cond_ids', 'cond_mask'} numpy,
      the data pipeline's caption tokenization (the builder, train/components, gives it).
    frozen: frozen params to bind (optional).
  """

  def __init__(self, model, config, image_tokens, conditioning, tokenize: Callable,
               frozen=None):
    self.model, self.config = model, config
    self.image_tokens, self.conditioning = image_tokens, conditioning
    self._tokenize = tokenize
    self.fns = mar.TextFns(condition=lambda v, f, b: conditioning.condition(v, f, b),
                           embed=conditioning.text_embedding,
                           detokenize=image_tokens.from_tokens)
    self.bound_frozen = frozen
    self._programs = {}
    self.seq_len = model.spec.seq_len

  # ------------------------------------------------------------------ host
  def tokenize(self, prompts: Sequence[str]) -> dict:
    """Prompts -> {'clip_ids' [P, ctx] int32, 'cond_ids', 'cond_mask'} numpy."""
    if isinstance(prompts, str):
      prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
      raise ValueError("the prompt list is empty: give at least one prompt")
    return self._tokenize(prompts)

  def options(self, overrides: dict) -> mar.DecodeOptions:
    cfg = float(overrides.get("cfg", self.config.sampling.cfg))
    kw = {k: overrides[k] for k in _DECODE_KEYS if overrides.get(k) is not None}
    return mar.options_from_config(self.config, cfg=cfg, **kw)

  def decoder(self, opts: mar.DecodeOptions) -> mar.MarDecoder:
    key = ("decoder", opts)
    if key not in self._programs:
      self._programs[key] = mar.MarDecoder(self.model, opts)
    return self._programs[key]

  def sad_step(self, opts: mar.DecodeOptions, overrides: dict) -> int:
    """T from `sad_step` or `sad_share` (overrides, then config.sampling), validated."""
    s = self.config.sampling
    sch = sched_lib.reveal_schedule(self.seq_len, opts.num_steps)
    share = overrides.get("sad_share", None)
    step = overrides.get("sad_step", None)
    if share is not None and step is not None:
      raise ValueError("give sad_step or sad_share, not both")
    if step is None and share is None:
      share = s.sad_share
      step = s.sad_step if share is None else None
    if share is not None:
      return sched_lib.sad_step_from_share(sch, float(share))
    return sched_lib.check_sad_step(sch, step)

  def num_candidates(self, overrides: dict) -> int:
    k = overrides.get("num_candidates")
    k = int(self.config.sampling.sad_candidates if k is None else k)
    if k < 1:
      raise ValueError(f"num_candidates K={k} must be >= 1")
    return k

  def program(self, kind: str, opts: mar.DecodeOptions, **static) -> Callable:
    """The jitted program (one executable per static options and input shapes)."""
    key = (kind, opts, tuple(sorted(static.items())))
    if key not in self._programs:
      dec = self.decoder(opts)
      fn = {"plain": mar.decode_plain, "sad": sad.decode_sad,
            "best_of_k": sad.decode_best_of_k}[kind]
      self._programs[key] = jax.jit(functools.partial(fn, dec, self.fns, **static))
    return self._programs[key]

  def frozen(self, frozen):
    """The frozen params to use: the argument, else the bound ones, else {} when the config
    needs none (identity tokenizer and a trainable condition encoder)."""
    if frozen is not None:
      return frozen
    if self.bound_frozen is not None:
      return self.bound_frozen
    if self.config.tokenizer.kind == "identity" and self.config.text.cond_encoder in (
        "small", "clip_tower"):
      return {}
    raise ValueError("this config needs frozen VAE / text-encoder parameters: pass `frozen` "
                     "or bind them with make_predict_fns(..., frozen=...)")

  def _inputs(self, prompts, overrides):
    batch = {k: jnp.asarray(v) for k, v in self.tokenize(prompts).items()}
    s = self.config.sampling
    temperature = jnp.float32(overrides.get("temperature", s.temperature))
    cfg = jnp.float32(overrides.get("cfg", s.cfg))
    return batch, temperature, cfg

  @staticmethod
  def _unknown(overrides, allowed):
    bad = set(overrides) - set(allowed) - set(_DECODE_KEYS) - {"cfg", "temperature"}
    if bad:
      raise TypeError(f"unknown sampling overrides: {sorted(bad)}")

  # --------------------------------------------------------------- predict
  def sample(self, variables, frozen, prompts, rng, **overrides) -> dict:
    """Plain MAR decoding -> dict(images uint8 [P,H,W,3], tokens [P,L,C])."""
    self._unknown(overrides, ())
    opts = self.options(overrides)
    batch, temp, cfg = self._inputs(prompts, overrides)
    frozen = self.frozen(frozen)
    out = self.program("plain", opts)(variables, frozen, batch, self.conditioning.empty, rng,
                                      temp, cfg)
    return jax.device_get(out)

  def sample_sad(self, variables, frozen, prompts, rng, **overrides) -> dict:
    """SAD -> dict(images, tokens, scores [P,K], winner [P], sad_step, ...); see sad.py."""
    self._unknown(overrides, ("num_candidates", "sad_step", "sad_share", "critic",
                              "return_candidates"))
    opts = self.options(overrides)
    k, t = self.num_candidates(overrides), self.sad_step(opts, overrides)
    batch, temp, cfg = self._inputs(prompts, overrides)
    fn = self.program("sad", opts, num_candidates=k, sad_step=t,
                      critic=overrides.get("critic", "final"),
                      return_candidates=bool(overrides.get("return_candidates", False)))
    frozen = self.frozen(frozen)
    out = jax.device_get(fn(variables, frozen, batch, self.conditioning.empty, rng, temp, cfg))
    out["sad_step"] = t
    out["revealed_share"] = sched_lib.reveal_schedule(self.seq_len,
                                                      opts.num_steps).revealed_share(t)
    return out

  def best_of_k(self, variables, frozen, prompts, rng, **overrides) -> dict:
    """Best-of-K -> dict(images, scores [P,K], winner [P], ...). With `scorer`, the winner
    is the argmax of the external scores (also returned as `external_scores`)."""
    self._unknown(overrides, ("num_candidates", "scorer", "return_candidates"))
    opts = self.options(overrides)
    k = self.num_candidates(overrides)
    scorer: Optional[Callable] = overrides.get("scorer")
    decode_all = scorer is not None or bool(overrides.get("return_candidates", False))
    batch, temp, cfg = self._inputs(prompts, overrides)
    fn = self.program("best_of_k", opts, num_candidates=k, decode_all=decode_all)
    frozen = self.frozen(frozen)
    out = jax.device_get(fn(variables, frozen, batch, self.conditioning.empty, rng, temp, cfg))
    if scorer is not None:
      p = len(out["images"])
      cand = out["candidates"]
      flat = cand.reshape((p * k,) + cand.shape[2:])
      texts = [t for t in ([prompts] if isinstance(prompts, str) else prompts)
               for _ in range(k)]
      ext = np.asarray(scorer(flat, texts), np.float32).reshape(p, k)
      win = sad.pick(ext)
      out.update(external_scores=ext, winner=win, images=cand[np.arange(p), win])
    return out


def make_predict_fns(model, config, image_tokens, conditioning, tokenize: Callable,
                     frozen=None) -> dict:
  """Named predict functions for the trainer and evaluators: sample, sample_sad, best_of_k
  (each `(variables, frozen, prompts, rng, **overrides) -> dict(images uint8 [N,H,W,3], ...)`).

  Evaluators do not hold the frozen parameters: bind them here (`frozen=`) and call with
  `frozen=None`; None without bound params works only for configs that need none."""
  s = Sampler(model, config, image_tokens, conditioning, tokenize, frozen=frozen)
  return dict(sample=s.sample, sample_sad=s.sample_sad, best_of_k=s.best_of_k)
