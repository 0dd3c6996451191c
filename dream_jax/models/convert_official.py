"""Official PyTorch DREAM state_dict -> dream_jax variables ({'params', 'batch_stats'}).

Name mapping (PyTorch -> ours). Linear weights are [out, in] and become kernels [in, out];
LayerNorm/BatchNorm `weight` becomes `scale`; fused qkv / in_proj keep their q | k | v order
(and cross-attention kv its k | v order), which is also ours.

  class_emb.weight[0]                  -> buffer_embed [1, D] (label 0: text-to-image)
  encoder_pos_embed_learned            -> encoder_pos_embed
  decoder_pos_embed_learned            -> decoder_pos_embed
  diffusion_pos_embed_learned          -> diffusion_pos_embed
  text_pos_emb                         -> text_pos_embed
  encoder_blocks.i / decoder_blocks.i / text_aligner.i -> *_i
  transformer.resblocks.i.attn.in_proj_{weight,bias}   -> text_tower/resblocks_i/in_proj
  transformer.resblocks.i.attn.out_proj / mlp.c_fc / mlp.c_proj -> out_proj / c_fc / c_proj
  token_embedding.weight, positional_embedding, text_projection, ln_final -> text_tower/...
  image_projection.bnK.running_{mean,var} -> batch_stats image_projection/bnK/{mean,var}
  diffloss.net.*                       -> diffloss/* (models.diffusion_head)
Not converted (unused by text-to-image): `fake_latent` (class-label dropout for class-
conditional training) and class_emb rows 1.. (the 1000-class table); `num_batches_tracked`.
"""
from __future__ import annotations

import re

import numpy as np

from dream_jax.models.diffusion_head import head_params_from_torch

UNUSED = ("fake_latent",)

_RENAMES = [
    (r"^encoder_pos_embed_learned$", "encoder_pos_embed"),
    (r"^decoder_pos_embed_learned$", "decoder_pos_embed"),
    (r"^diffusion_pos_embed_learned$", "diffusion_pos_embed"),
    (r"^text_pos_emb$", "text_pos_embed"),
    (r"^positional_embedding$", "text_tower/positional_embedding"),
    (r"^text_projection$", "text_tower/text_projection"),
    (r"^token_embedding\.weight$", "text_tower/token_embedding"),
    (r"^ln_final\.", "text_tower/ln_final."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$",
     r"text_tower/resblocks_\1/in_proj.\2"),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"text_tower/resblocks_\1/out_proj."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.(c_fc|c_proj)\.", r"text_tower/resblocks_\1/\2."),
    (r"^transformer\.resblocks\.(\d+)\.", r"text_tower/resblocks_\1/"),
    (r"^(encoder_blocks|decoder_blocks|text_aligner)\.(\d+)\.", r"\1_\2/"),
]


def _flax_name(name: str) -> str:
  for pat, rep in _RENAMES:
    name = re.sub(pat, rep, name)
  return name.replace(".", "/")


def _set(tree, path, value):
  keys = path.split("/")
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  if keys[-1] in tree:
    raise ValueError(f"duplicate target {path}")
  tree[keys[-1]] = value


def variables_from_official(sd: dict) -> dict:
  """Converts a state_dict of numpy arrays; returns {'params', 'batch_stats'} (float32)."""
  params, stats = {}, {}
  for name, value in sd.items():
    value = np.asarray(value)
    if name.startswith("diffloss.") or name in UNUSED or name.endswith("num_batches_tracked"):
      continue
    if name == "logit_scale":  # stored [1] in the reference, a scalar here
      _set(params, "logit_scale", value.reshape(()).astype(np.float32))
      continue
    if name == "class_emb.weight":
      _set(params, "buffer_embed", value[:1].astype(np.float32))
      continue
    m = re.match(r"^image_projection\.(bn\d)\.running_(mean|var)$", name)
    if m:
      _set(stats, f"image_projection/{m.group(1)}/{m.group(2)}", value.astype(np.float32))
      continue
    path = _flax_name(name)
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "weight":
      if value.ndim == 2:
        path, value = path[: -len("weight")] + "kernel", value.T
      else:  # LayerNorm / BatchNorm
        path = path[: -len("weight")] + "scale"
    _set(params, path, np.ascontiguousarray(value).astype(np.float32))
  params["diffloss"] = head_params_from_torch(sd, "diffloss.net.")["params"]
  return {"params": params, "batch_stats": stats}


def check_against(variables: dict, reference: dict) -> None:
  """Raises ValueError naming every missing / unexpected / mis-shaped entry."""
  import jax
  got = {"/".join(getattr(k, "key", str(k)) for k in p): np.shape(v)
         for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  want = {"/".join(getattr(k, "key", str(k)) for k in p): tuple(v.shape)
          for p, v in jax.tree_util.tree_leaves_with_path(reference)}
  problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(got))]
  problems += [f"unexpected {k} {got[k]}" for k in sorted(set(got) - set(want))]
  problems += [f"shape {k}: checkpoint {got[k]} vs model {want[k]}"
               for k in sorted(set(got) & set(want)) if tuple(got[k]) != tuple(want[k])]
  if problems:
    raise ValueError("converted weights do not fit the model:\n  " + "\n  ".join(problems))
