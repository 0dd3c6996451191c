"""The tiny run of the fault tests as a config file (main.py needs one to add evaluators):
dream_b16 runlocal with pixel tokens and the 'small' condition encoder (as TINY_FLAGS in
tests/fault_runner.py), a held-out evaluator every 2 steps and a 2-prompt sample grid at the
end, so a kill can land in an evaluation or in the samples.

  python main.py --config=tests/fault_config.py:steps=6 --workdir=W
"""
from configs import common, dream_b16


def get_config(arg=None):
  a = common.parse_arg(arg, steps=6)
  c = dream_b16.get_config("runlocal")
  c.tokenizer.update(kind="identity", patch_size=4)
  c.data.update(image_size=16, eval_size=16)
  c.text.cond_encoder = "small"
  c.text.update(small_width=32, small_layers=1, small_heads=2)
  c.total_steps = a.steps
  c.ckpt.update(every=2, keep=2)
  c.evals = common.ConfigDict()   # only the held-out evaluator (runlocal adds the paper's)
  c.evals.heldout = common.ConfigDict(dict(kind="heldout", every=2, diffusion_ratio=0.9,
                                           seed=0))
  c.sampling.prompts = ("a red circle", "a large blue square")
  return common.finalize(c)
