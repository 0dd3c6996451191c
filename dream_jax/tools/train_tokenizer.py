"""Trains the small frozen autoencoder tokenizer of a config and writes it.

  python -m dream_jax.tools.train_tokenizer --config=configs/demo.py [--force]

Writes `tokenizer.path` (or, when it is empty, the cache directory keyed by the hash of the
tokenizer and data settings; pretrained/autoencoder.py) with params.msgpack and
manifest.json (architecture, measured shift/scale, reconstruction metrics), and prints the
metrics. Without --force an existing complete directory is reused (nothing is trained).
The trainer calls the same code when the cache is missing, so this command is optional.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from dream_jax.pretrained import autoencoder
from dream_jax.train import tokenizer


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_bool("force", False, "Retrain even when the directory exists.")


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config.tokenizer.kind != "autoencoder":
    raise app.UsageError(f"config.tokenizer.kind={config.tokenizer.kind!r}: this command "
                         "trains tokenizer.kind='autoencoder' only")
  path, _ = autoencoder.resolve_path(config)
  if autoencoder.is_complete(path) and not flags.FLAGS.force:
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    print(f"reusing {path}: {json.dumps(manifest['metrics'])}")
    return
  tokenizer.write(config, path)
  print(f"wrote {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
