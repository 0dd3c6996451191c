"""Allocator tuning for CPU runs: re-exec the process once with a caching malloc.

Why: XLA:CPU allocates its temporary and output buffers with malloc on every step. glibc
mmaps buffers above its mmap threshold (at most 32 MiB) and unmaps them on free, so every
step faults its working set back in page by page: the CPU demo spent a third of its CPU
time in the kernel (GNU time: system 198-230 s against user 411-457 s, ~115 M minor faults).
Measured on the demo's train step (benchmarks/train_step.py --shapes=demo, per step):
  glibc defaults          system 61% of user, 222 k minor faults
  glibc tunables below    system 57% of user, 222 k (the big buffers are above 32 MiB)
  jemalloc, its defaults  system 64% of user, 225 k (allocations > 8 MiB purged at once)
  jemalloc, MALLOC_CONF   system  5% of user,  16 k
  tcmalloc (gperftools)   system  4% of user,  15 k
So tcmalloc is preloaded when installed (Debian/Ubuntu: `apt-get install
libtcmalloc-minimal4`), else jemalloc with `JEMALLOC_CONF` (`libjemalloc2`), else glibc's
tunables (little effect; kept as the fallback that needs no package).

The environment must be set before the process starts (the dynamic loader and glibc read
it then), hence the re-exec. `DREAM_NO_MALLOC_TUNING=1` turns it off; `DREAM_MALLOC_TUNED`
marks the re-executed process so that it happens at most once; a malloc the user already
preloads (LD_PRELOAD containing "malloc", as on TPU VM images) is left alone.
"""
from __future__ import annotations

import glob
import os
import sys

OPT_OUT = "DREAM_NO_MALLOC_TUNING"
MARK = "DREAM_MALLOC_TUNED"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
            "/usr/lib", "/usr/local/lib")
LIBS = (("tcmalloc", "libtcmalloc_minimal.so.4"), ("jemalloc", "libjemalloc.so.2"))
# jemalloc: no separate always-purged arena for allocations above 8 MiB (oversize_threshold),
# and freed pages kept for 30 s before they go back to the OS.
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000"
# glibc's own maximum for the mmap threshold on 64-bit (HEAP_MAX_SIZE / 2 = 32 MiB); a trim
# threshold of 1 GiB keeps freed heap memory mapped between steps.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def find_malloc(lib_dirs=LIB_DIRS) -> tuple[str, str]:
  """(kind, path) of the first installed library of LIBS, or ('', '')."""
  for kind, name in LIBS:
    for d in lib_dirs:
      hits = sorted(glob.glob(os.path.join(d, name)))
      if hits:
        return kind, hits[0]
  return "", ""


def tuned_environment(environ, found: tuple[str, str]) -> dict | None:
  """The environment to re-exec with (`found` from `find_malloc`), or None when nothing
  should change: opted out, already re-executed, or a malloc already preloaded."""
  if environ.get(OPT_OUT) or environ.get(MARK):
    return None
  preload = environ.get("LD_PRELOAD", "")
  if "malloc" in preload:
    return None
  kind, path = found
  env = dict(environ)
  env[MARK] = kind or "glibc-tunables"
  if path:
    env["LD_PRELOAD"] = ":".join(p for p in (path, preload) if p)
    if kind == "jemalloc":
      env["MALLOC_CONF"] = environ.get("MALLOC_CONF", JEMALLOC_CONF)
  else:
    env["GLIBC_TUNABLES"] = ":".join(p for p in (environ.get("GLIBC_TUNABLES", ""),
                                                 GLIBC_TUNABLES) if p)
  return env


def reexec_with_tuned_malloc() -> None:
  """Replaces this process by the same command line under the tuned allocator (no return),
  or returns at once when `tuned_environment` says nothing changes. Call it first, before
  jax is imported."""
  env = tuned_environment(os.environ, find_malloc())
  if env is None or sys.platform != "linux":
    return
  argv = list(getattr(sys, "orig_argv", [])) or [sys.executable] + sys.argv
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + argv[1:], env)


def release_free_memory() -> str:
  """Hands the allocator's cached free pages back to the OS, once (e.g. after a compile,
  whose transient memory the steps never reuse, so that a second process on the same host
  is not pushed into swap). Returns what was called: 'tcmalloc'
  (MallocExtension_ReleaseFreeMemory), 'glibc' (malloc_trim(0)) or '' (neither found;
  jemalloc returns its pages by its own decay)."""
  import ctypes
  try:
    lib = ctypes.CDLL(None)
  except OSError:
    return ""
  fn = getattr(lib, "MallocExtension_ReleaseFreeMemory", None)
  if fn is not None:
    fn()
    return "tcmalloc"
  if "jemalloc" in os.environ.get("LD_PRELOAD", ""):
    return ""
  trim = getattr(lib, "malloc_trim", None)
  if trim is not None:
    trim(0)
    return "glibc"
  return ""
