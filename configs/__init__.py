"""Run configs (ml_collections): `common.base_config()` holds every default; one file per run.

A leaf package: it imports nothing of `dream_jax` (enforced by .importlinter)."""
