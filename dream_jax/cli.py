"""Console-script entry points (pyproject.toml [project.scripts]) for modules whose `main`
is written for `python -m` (absl `app.run`, or a summary dict as the return value)."""
import sys


def sample() -> int:
  """dream-sample: `python -m dream_jax.sample`."""
  from dream_jax import sample as sample_lib
  sample_lib.main(sys.argv[1:])
  return 0


def inspect_source() -> None:
  """dream-inspect: `python -m dream_jax.data.inspect_source`."""
  from absl import app
  from dream_jax.data import inspect_source as lib
  app.run(lib.main)
