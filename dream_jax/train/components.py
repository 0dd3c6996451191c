"""Everything a run builds from its config, shared by the trainer and `load_for_inference`.

`Components(config)` holds the model, the image tokenizer, the frozen condition encoder,
the caption tokenizer and the objective (with the empty caption as the unconditional input).
`init_frozen()` loads (or, for tiny runs, randomly initialises) the frozen VAE / T5 params.
"""
from __future__ import annotations

import jax
import numpy as np

from dream_jax.image_tokens import ImageTokens
from dream_jax.models.api import DreamModel
from dream_jax.objective import DreamObjective, FrozenCond


def uncond_inputs(config, tokenizer, frozen_cond: FrozenCond) -> dict:
  """The empty caption as a batch of one (DESIGN.md: CFG's unconditional branch).

  clip_ids [1, ctx] from the CLIP-tower tokenizer; cond_ids / cond_mask [1, Lc] from the
  frozen encoder's tokenizer (t5 / minilm) or the CLIP tokenizer's padding mask ('small').
  """
  clip_ids = np.asarray(tokenizer.encode([""]), np.int32)
  out = dict(clip_ids=clip_ids)
  kind = config.text.cond_encoder
  if kind in ("t5", "minilm"):
    ids, mask = frozen_cond.tokenize([""])
    out.update(cond_ids=np.asarray(ids, np.int32), cond_mask=np.asarray(mask, bool))
  elif kind == "small":
    out.update(cond_ids=clip_ids, cond_mask=np.asarray(tokenizer.padding_mask(clip_ids), bool))
  return out


class Components:

  def __init__(self, config):
    from dream_jax.data import text_tokenizer
    self.config = config
    self.model = DreamModel(config)
    self.image_tokens = ImageTokens(config)
    self.frozen_cond = FrozenCond(config)
    self.tokenizer = text_tokenizer(config)
    self.eot_id = int(self.tokenizer.eot_id)
    self.uncond = uncond_inputs(config, self.tokenizer, self.frozen_cond)
    self.objective = DreamObjective(self.model, config, eot_id=self.eot_id, uncond=self.uncond,
                                    image_tokens=self.image_tokens,
                                    frozen_cond=self.frozen_cond)

  def init_frozen(self) -> dict:
    """{'vae': ..., 'text': ...}; fixed keys, so tiny random stand-ins are reproducible."""
    return dict(vae=self.image_tokens.init_frozen(jax.random.key(0)),
                text=self.frozen_cond.init_frozen(jax.random.key(1)))

  def frozen_shapes(self) -> dict:
    """ShapeDtypeStructs of `init_frozen()` without loading or allocating anything (the
    random initialiser under `jax.eval_shape`: same architecture, so same tree as the
    loaded weights). Used to compile for devices that cannot run (AOT)."""
    def random_init():
      vae = self.image_tokens.vae
      enc = self.frozen_cond.encoder
      return dict(vae={} if vae is None else vae.init_params(jax.random.key(0)),
                  text={} if enc is None else enc.init_params(jax.random.key(1)))
    return jax.eval_shape(random_init)
