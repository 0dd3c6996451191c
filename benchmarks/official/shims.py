"""CPU shims installed in the official-model subprocess before its files are imported.

The official DREAM/MAR code assumes CUDA and a full vision stack; the benchmark runs it on
the CPU without editing it:
  * `Tensor.cuda()` / `Module.cuda()` return `self` (MAR's sampling loop calls `.cuda()`);
  * `torchvision` (imported by `timm.data` / `timm.layers`, unused by the model classes) is
    a permissive stub package: every attribute is a stub class;
  * `util.misc` (DREAM's distributed helpers, imported by `models/clip_loss.py`) answers
    "not distributed, rank 0";
  * torch runs with a fixed thread count (the official measurement used 2).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _StubMeta(type):
  """Classes whose every attribute is another stub class (so `X.Y.Z`, subclassing and
  using them as dict keys all work at import time)."""

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _StubMeta(name, (object,), {})

  def __call__(cls, *args, **kwargs):
    return cls


class _StubModule(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _StubMeta(name, (object,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Resolves `prefix` and every submodule of it to a `_StubModule`."""

  def __init__(self, prefix: str):
    self.prefix = prefix

  def find_spec(self, fullname, path=None, target=None):
    if fullname == self.prefix or fullname.startswith(self.prefix + "."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    m = _StubModule(spec.name)
    m.__path__ = []
    return m

  def exec_module(self, module):
    pass


def stub_package(prefix: str) -> None:
  """Make `import prefix[.anything]` succeed with stub modules (if the real one is absent)."""
  try:
    __import__(prefix)
    return                                   # the real package is installed: use it
  except ImportError:
    pass
  sys.meta_path.insert(0, _StubFinder(prefix))


def misc_module() -> types.ModuleType:
  """Stand-in for DREAM's `util.misc`: a single, non-distributed process."""
  util = types.ModuleType("util")
  util.__path__ = []
  misc = types.ModuleType("util.misc")
  misc.is_dist_avail_and_initialized = lambda: False
  misc.get_rank = lambda: 0
  misc.get_world_size = lambda: 1
  util.misc = misc
  return util


def install(official: str, threads: int = 2) -> None:
  """Everything the official model files need on a CUDA-less CPU; `official` goes first on
  sys.path so that `models.*` and `diffusion.*` resolve to the official files."""
  import torch
  torch.set_num_threads(threads)
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.nn.Module.cuda = lambda self, *a, **k: self
  stub_package("torchvision")
  util = misc_module()
  sys.modules.setdefault("util", util)
  sys.modules.setdefault("util.misc", util.misc)
  sys.path.insert(0, official)
