"""Standalone evaluation of a trained run: the EMA weights and BatchNorm statistics of
W/checkpoints/<step>, the evaluators of `config.evals`, a printed table, W/eval/<step>.json
and rows appended to W/metrics.jsonl ('<name>/<key>', as the trainer writes them).

  python -m dream_jax.evaluate --workdir=W [--step=N] [--evals=name1,name2]
      [--evals_config=configs/demo.py:evals=full] [--config.evals.<name>.<key>=value ...]

  --evals_config   take `config.evals` from this config file (path[:arg]) instead of the run's
                   own W/config.json (e.g. a wider suite than the one run during training)
  --evals          run only these entries
  --config.evals.NAME.KEY=VALUE   override one key (parsed as the key's current type;
                   Python literals for tuples / None)
Entries written before a key existed take that key's default (configs/evaluators.py).
Every host runs the same evaluators (features are gathered); only process 0 writes.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time


def parse_override(current, text: str):
  """'value' -> the type of `current` (bool / int / float / str / tuple / None literals)."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
      raise ValueError(f"expected a bool, got {text!r}")
    return text.lower() in ("true", "1", "yes")
  if isinstance(current, int) and not isinstance(current, bool):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return tuple(value) if isinstance(value, list) else value


def apply_overrides(config, overrides: list[str]) -> None:
  """`config.evals.x.y=v` strings -> set on the (unlocked) config; unknown keys are errors."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep or not key.startswith("config."):
      raise ValueError(f"override {item!r}: expected --config.KEY=VALUE")
    *path, last = key[len("config."):].split(".")
    node = config
    for p in path:
      if p not in node:
        raise KeyError(f"--{key}: config has no {p!r} (known: {sorted(node.keys())})")
      node = node[p]
    if last not in node:
      raise KeyError(f"--{key}: unknown key {last!r} (known: {sorted(node.keys())})")
    node[last] = parse_override(node[last], text)


def format_table(results: dict[str, dict], seconds: dict[str, float]) -> str:
  lines = [f"{'evaluator':<22} {'metric':<28} {'value':>12}", "-" * 64]
  for name, res in results.items():
    for k, v in res.items():
      value = f"{v:.4f}" if isinstance(v, float) else str(v)
      lines.append(f"{name:<22} {k:<28} {value:>12}")
    lines.append(f"{name:<22} {'seconds':<28} {seconds[name]:>12.1f}")
  return "\n".join(lines)


def evaluate(workdir: str, *, step=None, names=None, evals_config: str = "",
             overrides=()) -> dict:
  """Runs the evaluators on a run's checkpoint; returns {'step', 'results', 'seconds'}."""
  import jax

  from configs import evaluators as eval_configs
  from dream_jax.evaluators import EvalContext, FeatureCache, build_evaluator
  from dream_jax.train import metrics as metrics_lib
  from dream_jax.train import sharding
  from dream_jax.train.components import Components
  from dream_jax.train.inference import load_for_inference
  from dream_jax.train.predict import make_predict_fns

  config, _, variables, frozen = load_for_inference(workdir, step)
  from dream_jax.train import checkpoint as ckpt_lib
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  step = ckpt.latest_step() if step is None else int(step)
  ckpt.close()
  with config.unlocked():
    if evals_config:
      from configs.common import load_config_file
      config.evals = load_config_file(evals_config).evals
    eval_configs.fill_defaults(config.evals)
    apply_overrides(config, list(overrides))
  wanted = list(config.evals.keys()) if not names else list(names)
  missing = [n for n in wanted if n not in config.evals]
  if missing:
    raise KeyError(f"--evals: {missing} not in config.evals ({sorted(config.evals.keys())})")

  mesh = sharding.make_mesh(config)
  components = Components(config)
  with jax.set_mesh(mesh):
    rep = sharding.replicated(mesh)
    variables = jax.device_put(variables, rep)
    frozen = jax.device_put(frozen, rep)
  predict_fns = make_predict_fns(components, frozen, mesh)
  context = EvalContext(config, workdir)
  cache = FeatureCache()
  results, seconds = {}, {}
  for name in wanted:
    ev = build_evaluator(config.evals[name], predict_fns, context)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
      results[name] = {k: float(v) if isinstance(v, (int, float)) else v
                       for k, v in ev.run(variables, step=step, cache=cache).items()}
    seconds[name] = time.perf_counter() - t0
    print(f"[{name}] {seconds[name]:.1f} s", flush=True)

  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{step}.json"), "w") as f:
      json.dump(dict(step=step, results=results, seconds=seconds,
                     evals=config.evals.to_dict()), f, indent=2, default=str)
  writer = metrics_lib.MetricWriter(workdir, tensorboard=False)
  row = {f"{n}/{k}": v for n, res in results.items() for k, v in res.items()}
  row.update({f"{n}/seconds": s for n, s in seconds.items()})
  writer.write(step, row)
  writer.close()
  print(format_table(results, seconds), flush=True)
  return dict(step=step, results=results, seconds=seconds)


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--evals", default="", help="comma-separated entry names (default: all)")
  p.add_argument("--evals_config", default="", help="config file path[:arg] giving evals")
  args, rest = p.parse_known_args(argv)
  overrides = [a[2:] for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    p.error(f"unrecognised arguments: {unknown}")
  evaluate(args.workdir, step=args.step,
           names=[n for n in args.evals.split(",") if n] or None,
           evals_config=args.evals_config, overrides=overrides)


if __name__ == "__main__":
  from dream_jax.utils import xla_cpu
  xla_cpu.use_default_flags()   # the numerics main.py trains with (before jax starts)
  main()
