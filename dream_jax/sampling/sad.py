"""Semantically Aligned Decoding (SAD) and the best-of-K baseline (docs/DESIGN.md section 3).

SAD. For each of P prompts, K candidates share the prompt's text and ONE random order and
are decoded together as a batch of K*P (rows prompt-major: row p*K + k) for the first T of N
steps. They differ only by the diffusion noise. At step T each partial candidate is scored
by the model itself, exactly as in training: the encoder sees the decoded tokens only
(masked ones dropped; the visible count L - masked_after[T-1] is static, so no padding), the
contrastive image projection runs with BatchNorm running statistics, and the score is the
cosine with the prompt's CLIP-tower text embedding. The argmax candidate of each prompt is
gathered (tokens, order) and the remaining N - T steps run at batch P, not K*P.
Before step 0 the K candidates of a prompt are identical (no token decoded, one order, one
text), so step 0's encoder and decoder run once per prompt and only the head samples K*P rows
(`MarDecoder.run`'s `shared_start`). Transformer passes per prompt: K*(T-1) + 1 + (N - T)
against K*N for best-of-K (`sad_cost`), plus one encoder pass over the K*P candidates for
the score (no decoder). Both phases are loops in ONE jitted program; the selection is a
device-side gather.

  critic='final' (paper): the score after T steps.
  critic='mean' (per-step variant): the mean of the scores after 1..T steps. The encoder
    output of step s already encodes the tokens decoded after s steps, so each per-step score
    only adds the projection MLP; they are written into a preallocated [T, K*P] array inside
    the loop (after-0-steps row included: every candidate scores the same there).

Best-of-K. K*P independent decodes (own order and noise per candidate), all N steps, then the
internal rerank: encoder on the FULL image (nothing masked), projection, cosine with the text.
An external scorer (host callable) can replace the internal score; then every candidate is
decoded to pixels.

With K = 1 both reduce to plain decoding of the same key (same orders, same step keys).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.sampling import mar

CRITICS = ("final", "mean")


def _gather(state: mar.DecodeState, rows) -> mar.DecodeState:
  return jax.tree.map(lambda a: a[rows], state)


def decode_sad(decoder: mar.MarDecoder, fns: mar.TextFns, variables, frozen, batch, uncond,
               rng, temperature, cfg, *, num_candidates: int, sad_step: int,
               critic: str = "final", return_candidates: bool = False) -> dict:
  """SAD for P prompts (arguments as `mar.decode_plain`; K, T, critic static).

  Returns dict(images uint8 [P,H,W,3], tokens [P,L,C], scores float32 [P,K] (the critic's
  score of every candidate), winner int32 [P] (= argmax of scores), step_scores [T+1, P, K]
  (critic='mean' only: after 0..T steps), and with return_candidates the partial candidates
  at step T decoded to pixels: candidates uint8 [P,K,H,W,3] (undecoded tokens are zeros)
  and their tokens candidate_tokens [P,K,L,C]).
  """
  if critic not in CRITICS:
    raise ValueError(f"critic must be one of {CRITICS}, got {critic!r}")
  sch = decoder.schedule
  k, t, n = int(num_candidates), int(sad_step), decoder.opts.num_steps
  p = batch["clip_ids"].shape[0]
  guided = decoder.opts.guided
  pc = mar.prompt_cond(fns, variables, frozen, batch, uncond, guided)
  text_k = jnp.repeat(fns.embed(variables, batch["clip_ids"]), k, 0)

  # Phase 1: K*P candidates, steps [0, T), one shared order per prompt.
  state = mar.init_state(mar.order_key(rng), p, decoder.L, decoder.C, repeat=k)
  cond_k = mar.expand_cond(pc, guided, repeat=k)
  if critic == "mean":
    def on_encode(traj, s, hidden, valid):
      return traj.at[s].set(decoder.score(variables, hidden, valid, text_k))
    traj0 = jnp.zeros((t, p * k), jnp.float32)
    state, traj = decoder.run(variables, state, cond_k, rng, temperature, cfg, 0, t,
                              carry=traj0, on_encode=on_encode, shared_start=k)
  else:
    state = decoder.run(variables, state, cond_k, rng, temperature, cfg, 0, t,
                        shared_start=k)

  # Score the partial candidates: decoded tokens only, exact static visible count.
  n_vis = int(sch.seq_len - sch.masked_after[t - 1])
  visible = mar.visible_mask(state, int(sch.masked_after[t - 1]))
  hidden, valid = decoder.encode(variables, state.tokens, visible, n_vis)
  final = decoder.score(variables, hidden, valid, text_k)                # [K*P]
  out = {}
  if critic == "mean":
    steps = jnp.concatenate([traj, final[None]], axis=0)                 # after 0..T steps
    crit = steps[1:].mean(axis=0)
    out["step_scores"] = steps.reshape(t + 1, p, k)
  else:
    crit = final
  scores = crit.reshape(p, k)
  winner = jnp.argmax(scores, axis=1).astype(jnp.int32)
  if return_candidates:
    cand = fns.detokenize(frozen.get("vae"), state.tokens)
    out["candidates"] = mar.to_uint8(cand).reshape((p, k) + cand.shape[1:])
    out["candidate_tokens"] = state.tokens.reshape((p, k) + state.tokens.shape[1:])

  # Phase 2: the winners only, steps [T, N), batch P.
  state = _gather(state, jnp.arange(p) * k + winner)
  state = decoder.run(variables, state, mar.expand_cond(pc, guided), rng, temperature, cfg,
                      t, n)
  images = mar.to_uint8(fns.detokenize(frozen.get("vae"), state.tokens))
  out.update(images=images, tokens=state.tokens, scores=scores, winner=winner)
  return out


def decode_best_of_k(decoder: mar.MarDecoder, fns: mar.TextFns, variables, frozen, batch,
                     uncond, rng, temperature, cfg, *, num_candidates: int,
                     decode_all: bool = False) -> dict:
  """Best-of-K with the model's own heads (arguments as `mar.decode_plain`).

  Returns dict(images uint8 [P,H,W,3] (the internal winners), tokens [P,L,C], scores
  [P,K] (cosine of the full-image embedding with the text), winner [P]; with decode_all
  also candidates uint8 [P,K,H,W,3] (for an external scorer or a figure)).
  """
  k, n = int(num_candidates), decoder.opts.num_steps
  p = batch["clip_ids"].shape[0]
  guided = decoder.opts.guided
  pc = mar.prompt_cond(fns, variables, frozen, batch, uncond, guided)
  state = mar.init_state(mar.order_key(rng), p * k, decoder.L, decoder.C)
  state = decoder.run(variables, state, mar.expand_cond(pc, guided, repeat=k), rng,
                      temperature, cfg, 0, n)
  text_k = jnp.repeat(fns.embed(variables, batch["clip_ids"]), k, 0)
  full = jnp.ones(state.tokens.shape[:2], bool)                         # nothing masked
  hidden, valid = decoder.encode(variables, state.tokens, full, decoder.L)
  scores = decoder.score(variables, hidden, valid, text_k).reshape(p, k)
  winner = jnp.argmax(scores, axis=1).astype(jnp.int32)
  best = state.tokens[jnp.arange(p) * k + winner]
  out = dict(tokens=best, scores=scores, winner=winner)
  vae = frozen.get("vae")
  if decode_all:
    cand = mar.to_uint8(fns.detokenize(vae, state.tokens))
    cand = cand.reshape((p, k) + cand.shape[1:])
    out["candidates"] = cand
    out["images"] = cand[jnp.arange(p), winner]
  else:
    out["images"] = mar.to_uint8(fns.detokenize(vae, best))
  return out


def sad_cost(num_candidates: int, sad_step: int, num_steps: int) -> float:
  """SAD decoder passes relative to best-of-K: (K*(T-1) + 1 + N - T) / (K*N) (step 0 runs
  once per prompt: its K candidates are still identical)."""
  k, t, n = num_candidates, sad_step, num_steps
  return (k * (t - 1) + 1 + n - t) / (k * n)


def pick(scores) -> np.ndarray:
  """Host argmax per prompt of [P, K] scores (external scorer path)."""
  return np.asarray(scores).argmax(axis=1).astype(np.int32)
