"""DREAM-L/16: the paper recipe (CC12M 256px, batch 2048, 48 epochs) at size L.

Launch (Cloud TPU / GPU cluster, see launch/):
  python main.py --config=configs/dream_l16.py --workdir=gs://BUCKET/dream_l16 \
      --config.data.path='gs://BUCKET/cc12m/{00000..01242}.tar'
CPU smoke run (tiny random VAE/T5 stand-ins, shapes data, a few steps):
  python main.py --config=configs/dream_l16.py:runlocal --workdir=/tmp/dream_l16

Arguments (comma separated): recipe=dream|fluid|clip|nowarmup, runlocal.
Paper FID (CC12M, 50k samples): see docs/DESIGN.md section 4 for the published numbers by size.
"""
from configs import common


def get_config(arg=None):
  return common.paper_config("L", arg)
