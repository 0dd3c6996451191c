"""DREAM-G/16: the paper recipe (CC12M 256px, batch 2048, 48 epochs) at size G.

Launch (Cloud TPU / GPU cluster, see launch/):
  python main.py --config=configs/dream_g16.py --workdir=gs://BUCKET/dream_g16 \
      --config.data.path='gs://BUCKET/cc12m/{00000..01242}.tar'
CPU smoke run (tiny random VAE/T5 stand-ins, embedded data, a few steps):
  python main.py --config=configs/dream_g16.py:runlocal --workdir=/tmp/dream_g16

Arguments (comma separated): recipe=dream|fluid|clip|nowarmup, runlocal.
Paper FID (CC12M, 50k samples): see DESIGN.md section 4 for the published numbers by size.
"""
from configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, recipe="dream", runlocal=False)
  c = common.base_config()
  common.set_model_size(c, "G")
  c.data.name = "wds"                      # img2dataset tar shards of CC12M (paper data)
  c.data.path = ""                         # e.g. gs://BUCKET/cc12m/{00000..01242}.tar
  common.apply_recipe(c, a.recipe)
  if a.runlocal:
    common.runlocal(c)
  return common.finalize(c)
