"""Everything a run builds from its config, shared by the trainer and `load_for_inference`.

`Components(config)` holds the model, the image tokenizer, the caption tokenization (the
data pipeline's `CaptionTokens`), the empty caption (tokenized ONCE, here), the
`Conditioning` and the objective. `init_frozen()` loads (or, for tiny runs, randomly
initialises) the frozen VAE / text-encoder params and adds the empty caption's frozen
features, computed once per program.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from dream_jax.conditioning import Conditioning, FrozenCond
from dream_jax.data import text_tokenizer
from dream_jax.data.pipeline import CaptionTokens
from dream_jax.image_tokens import ImageTokens
from dream_jax.models.api import DreamModel
from dream_jax.models.diffloss import DiffLoss
from dream_jax.models.dream import ModelSpec
from dream_jax.models.layers import remat_policy_name
from dream_jax.models.patchify import token_layout
from dream_jax.objective import DreamObjective


def model_spec(config) -> ModelSpec:
  """The network's static sizes from the run config (model, text, tokenizer sections; the
  token readout exists only when loss.w_token_regression > 0)."""
  d = token_layout(config.tokenizer, config.data.image_size)
  m, t = config.model, config.text
  mlp = m.mlp_dim or int(m.width * m.mlp_ratio)
  dec_mlp = m.mlp_dim or int(m.dec_width * m.mlp_ratio)
  if t.cond_encoder in ("t5", "minilm"):
    cond_dim, cond_len = t.cond_dim, t.cond_len
  elif t.cond_encoder == "clip_tower":
    cond_dim, cond_len = t.width, t.context_length
  else:
    cond_dim, cond_len = t.small_width, t.context_length
  return ModelSpec(
      seq_len=d["seq_len"], token_dim=d["token_dim"], width=m.width, depth=m.depth,
      heads=m.heads, dec_width=m.dec_width, dec_depth=m.dec_depth, dec_heads=m.dec_heads,
      mlp_dim=mlp, dec_mlp_dim=dec_mlp, buffer_size=m.buffer_size,
      attn_dropout=m.attn_dropout, proj_dropout=m.proj_dropout, ln_eps=m.ln_eps,
      embed_dim=m.embed_dim, proj_hidden=m.proj_hidden, bn_eps=m.bn_eps,
      bn_momentum=m.bn_momentum, logit_scale_init=m.logit_scale_init,
      aligner_depth=m.aligner_depth, cond_encoder=t.cond_encoder, cond_dim=cond_dim,
      cond_len=cond_len, text_vocab=t.vocab_size, text_ctx=t.context_length,
      text_width=t.width, text_layers=t.layers, text_heads=t.heads,
      text_mlp_dim=int(t.width * t.mlp_ratio), text_ln_eps=t.ln_eps,
      text_token_init_std=t.token_init_std,
      small_width=t.small_width, small_layers=t.small_layers, small_heads=t.small_heads,
      diff_depth=m.diff_depth, diff_width=m.diff_width, dtype=config.compute_dtype,
      remat=remat_policy_name(m.remat), scan_layers=bool(m.scan_layers),
      token_readout=config.loss.w_token_regression > 0, pos_embed_init=m.pos_embed_init)


def build_model(config) -> DreamModel:
  """The run's `DreamModel`: its spec, the diffusion head's chains (DiffLoss) and options."""
  m = config.model
  spec = model_spec(config)
  diffloss = DiffLoss(
      token_dim=spec.token_dim, num_train_timesteps=m.num_train_timesteps,
      noise_schedule=m.noise_schedule, prediction=m.diffusion_prediction,
      loss_space=m.diffusion_loss_space,
      num_sampling_steps=config.sampling.num_diffusion_steps,
      batch_mul=m.diffusion_batch_mul, buckets=m.diffusion_buckets,
      clip_denoised=config.sampling.clip_denoised, t_sampling=m.diffusion_t_sampling,
      t_logit_mean=m.diffusion_t_logit_mean, t_logit_std=m.diffusion_t_logit_std)
  return DreamModel(spec, diffloss, encoder_path=m.encoder_path,
                    encoder_buckets=m.encoder_buckets, mask_text_padding=m.mask_text_padding,
                    logit_scale_max=m.logit_scale_max,
                    text_buckets=m.text_buckets)


class Components:

  def __init__(self, config):
    self.config = config
    self.model = build_model(config)
    self.image_tokens = ImageTokens(config)
    self.tokenizer = text_tokenizer(config)
    self.eot_id = int(self.tokenizer.eot_id)
    self.caption_tokens = CaptionTokens(config.text, self.tokenizer)
    # The empty caption (CFG's unconditional branch) as a batch of one, tokenized exactly as
    # the data pipeline tokenizes captions.
    self.empty = self.tokenize([""])
    self.conditioning = Conditioning(self.model, eot_id=self.eot_id, empty=self.empty,
                                     caption_drop=config.loss.caption_drop,
                                     frozen_encoder=FrozenCond(config.text))
    self.objective = DreamObjective(self.model, config, conditioning=self.conditioning,
                                    image_tokens=self.image_tokens)

  def tokenize(self, prompts: Sequence[str]) -> dict:
    """Prompts -> {'clip_ids' [P, ctx] int32, 'cond_ids' [P, Lc], 'cond_mask' [P, Lc]}."""
    rows = [self.caption_tokens(p) for p in prompts]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def init_frozen(self) -> dict:
    """{'vae', 'text'} (+ 'empty_cond' for frozen condition encoders); fixed keys, so tiny
    random stand-ins are reproducible. An 'autoencoder' tokenizer missing from its cache is
    trained here first (train/tokenizer.py: deterministic, about a minute on CPU)."""
    if self.config.tokenizer.kind == "autoencoder":
      from dream_jax.train import tokenizer
      tokenizer.ensure(self.config)
    frozen = dict(vae=self.image_tokens.init_frozen(jax.random.key(0)),
                  text=self.conditioning.frozen_encoder.init_frozen(jax.random.key(1)))
    return self.conditioning.with_empty_features(frozen)

  def frozen_shapes(self) -> dict:
    """ShapeDtypeStructs of `init_frozen()` without loading or allocating anything: the
    random initialisers under `jax.eval_shape` (same architecture, so the same tree as the
    loaded weights). For devices that cannot run (AOT compiles, dream_jax.tools.aot)."""
    enc = self.conditioning.frozen_encoder

    def random_init():
      vae, ae = self.image_tokens.vae, self.image_tokens.autoencoder
      if ae is not None:
        from dream_jax.pretrained import autoencoder
        vae_shapes = autoencoder.frozen_shapes(ae)
      else:
        vae_shapes = {} if vae is None else vae.init_params(jax.random.key(0))
      return dict(vae=vae_shapes,
                  text={} if enc.encoder is None else enc.encoder.init_params(
                      jax.random.key(1)))
    shapes = jax.eval_shape(random_init)
    if enc.encoder is not None and "cond_ids" in self.empty:
      feats = jax.eval_shape(enc.features, shapes["text"], self.empty["cond_ids"],
                             self.empty["cond_mask"])
      shapes["empty_cond"] = jax.ShapeDtypeStruct(feats.shape, np.float32)
    return shapes

  def sampler(self, frozen=None):
    """The `dream_jax.sampling.Sampler` of this run (frozen params optionally bound)."""
    from dream_jax import sampling
    return sampling.Sampler(self.model, self.config, self.image_tokens, self.conditioning,
                            self.tokenize, frozen=frozen)
