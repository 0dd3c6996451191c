"""Reads a few batches of the configured input pipeline and prints one JSON line.

    python -m dream_jax.data.inspect_source --config=configs/dream_b16.py:runlocal \\
        [--config.data.name=wds --config.data.path='/data/cc3m/{00000..00331}.tar'] \\
        [--num_batches=20] [--split=train] [--process_index=0 --process_count=1]

Output: {"split", "source", "batches", "examples", "skipped": {reason: n}, "examples_per_s",
"first_batch_s", "keys": {key: [shape, dtype]}}; examples/s excludes the first batch (index
building, thread start-up).
"""
from __future__ import annotations

import json
import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training config.")
flags.DEFINE_integer("num_batches", 20, "Batches to read.")
flags.DEFINE_string("split", "train", "'train' or 'eval'.")
flags.DEFINE_integer("process_index", 0, "Pretend to be this host.")
flags.DEFINE_integer("process_count", 1, "Pretend there are this many hosts.")
flags.mark_flags_as_required(["config"])


def inspect_pipeline(config, *, split: str = "train", num_batches: int = 20,
                     process_index: int = 0, process_count: int = 1) -> dict:
  from dream_jax.data import make_dataset

  t0 = time.perf_counter()
  ds = make_dataset(config, split, process_index=process_index, process_count=process_count)
  it = ds.iterator()
  first = next(it)
  t1 = time.perf_counter()
  examples, batches = len(next(iter(first.values()))), 1
  for batch in it:
    if batches >= num_batches:
      break
    examples += len(next(iter(batch.values())))
    batches += 1
  t2 = time.perf_counter()
  rest = examples - len(next(iter(first.values())))
  return dict(split=split, source=config.data.name, batches=batches, examples=examples,
              skipped=ds.skip_counts(), examples_per_s=round(rest / max(t2 - t1, 1e-9), 1),
              first_batch_s=round(t1 - t0, 3),
              keys={k: [list(v.shape), str(v.dtype)] for k, v in first.items()})


def main(argv):
  del argv
  f = flags.FLAGS
  print(json.dumps(inspect_pipeline(f.config, split=f.split, num_batches=f.num_batches,
                                    process_index=f.process_index,
                                    process_count=f.process_count)))


if __name__ == "__main__":
  app.run(main)
