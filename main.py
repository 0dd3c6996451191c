"""DREAM training entry point from a checkout: `python main.py --config=... --workdir=...`.

The program lives in `dream_jax/main.py` (installed as `dream-train`).
"""
from dream_jax.main import run

if __name__ == "__main__":
  run()
