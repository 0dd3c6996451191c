"""Console output of the command-line tools: quiet libraries, one-line user errors.

Default (no `--verbosity` flag): absl, orbax, jax and grain log at WARNING, so a run prints
only its own progress lines, evaluation lines and final summary. `--verbosity=0` shows the
libraries' INFO logging, `--verbosity=1` DEBUG and the traceback of a user error.

A user error (a bad config value, a missing file, an unknown `--config.x` key, a diverged
run) prints as ONE line naming the key or file, exit status 2; anything else keeps its
traceback (a bug is not a user error).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

from absl import flags, logging

# ValueError covers config validation (and its ConfigError subclass), OSError missing or
# unreadable inputs (a config file that does not load, a full disk), FloatingPointError the
# trainer's non-finite stop.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
TRACEBACK_HINT = "(--verbosity=1 shows the traceback)"


def verbosity() -> int:
  """The `--verbosity` the user gave, else -1 (the quiet default)."""
  f = flags.FLAGS
  if "verbosity" in f and f["verbosity"].present:
    return int(f.verbosity)
  return -1


def quiet_libraries() -> None:
  """Library logging at WARNING unless `--verbosity` was given (absl's own default, INFO,
  prints ~300 lines of orbax checkpointing detail in a 500-step demo)."""
  if verbosity() < 0:
    logging.set_verbosity(logging.WARNING)   # absl's level is also the Python root level
  # TensorFlow's C++ logging (only when TF happens to be installed, for TensorBoard).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbosity() < 0 else "0")


def one_line(e: BaseException) -> str:
  """`error: <message>` on one line (multi-line messages joined with '; ')."""
  msg = str(e).strip() or type(e).__name__
  msg = "; ".join(x.strip() for x in msg.replace("\\n", "\n").splitlines() if x.strip())
  return f"error: {msg}"


def fail(e: BaseException, code: int = 2):
  """Prints the one-line form of `e` (traceback first when --verbosity >= 1); exits."""
  if verbosity() >= 1:
    import traceback
    traceback.print_exception(e)
  print(one_line(e) + ("" if verbosity() >= 1 else f"  {TRACEBACK_HINT}"), file=sys.stderr,
        flush=True)
  sys.exit(code)


def user_errors(fn: Callable) -> Callable:
  """Decorator for an `app.run` main: USER_ERRORS become one line and exit status 2."""
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except USER_ERRORS as e:
      fail(e)
  wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
  return wrapped


def _verbosity_in(argv: Sequence[str]) -> int:
  for a in argv:
    m = re.fullmatch(r"--(?:verbosity|v)=(-?\d+)", a)
    if m:
      return int(m.group(1))
  return -1


def _load_config(argv: Sequence[str]):
  """The config of `--config=path[:arg]` in argv, loaded as config_flags loads it."""
  spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  path, _, arg = spec.partition(":")
  import importlib.util
  mod_spec = importlib.util.spec_from_file_location("_dream_config_for_hint", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def _section_keys(flag: str, argv: Sequence[str]) -> str:
  """The keys of the deepest existing section on `--config.a.b.c`'s path, e.g.
  "; config.model has: width, depth, ..."."""
  try:
    node, path = _load_config(argv), ["config"]
    for part in flag[len("--config."):].split(".")[:-1]:
      if part not in node:
        break
      node, path = node[part], path + [part]
    return f"; {'.'.join(path)} has: " + ", ".join(sorted(node.keys()))
  except Exception:   # noqa: BLE001  only a hint
    return ""


def _unknown_key(e: AttributeError, argv: Sequence[str]) -> str:
  """ml_collections' `AttributeError: "'widht'\\nDid you mean ..."` -> the flag it came
  from, the hint and the section's keys, on one line."""
  text = str(e).strip("\"'").replace("\\n", "\n")
  lines = text.splitlines() or ["?"]
  key = lines[0].strip("'\"\\")
  hint = " ".join(lines[1:]).strip()
  flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
               and a.split("=")[0].split(".")[-1] == key), None)
  if flag is None:
    return f"no such config key {key!r}" + (f" ({hint})" if hint else "")
  return (f"{flag}: no such config key {key!r}" + (f" ({hint})" if hint else "")
          + _section_keys(flag, argv))


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`flags_parser` for `app.run`: a bad flag or config override is one line, exit 2."""
  try:
    return flags.FLAGS(list(argv))
  except SystemExit:
    raise
  except Exception as e:   # noqa: BLE001  flag parsing errors come in many types
    if _verbosity_in(argv) >= 1:
      raise
    if isinstance(e, AttributeError):
      msg = _unknown_key(e, argv)
    else:
      msg = one_line(e)[len("error: "):]
    print(f"error: {msg}  {TRACEBACK_HINT}", file=sys.stderr, flush=True)
    sys.exit(2)
