"""PNG helpers for sample grids and the SAD candidate figure (Pillow only, host numpy)."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np


def make_grid(images: np.ndarray, ncol: Optional[int] = None, pad: int = 2,
              fill: int = 255) -> np.ndarray:
  """uint8 [N, H, W, 3] -> one uint8 [rows*(H+pad)+pad, ncol*(W+pad)+pad, 3] grid."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y: y + h, x: x + w] = images[i]
  return grid


def save_png(image: np.ndarray, path: str) -> str:
  from PIL import Image
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
  return path


def save_grid_and_singles(images: np.ndarray, out_path: str, ncol: Optional[int] = None
                          ) -> list[str]:
  """Writes the grid at `out_path` and one PNG per image beside it (`<stem>_<i>.png`)."""
  paths = [save_png(make_grid(images, ncol), out_path)]
  stem, ext = os.path.splitext(out_path)
  for i, img in enumerate(np.asarray(images)):
    paths.append(save_png(img, f"{stem}_{i:03d}{ext or '.png'}"))
  return paths


def candidates_figure(candidates: np.ndarray, scores: np.ndarray, winner: np.ndarray,
                      prompts: Sequence[str], *, scale: int = 4, step: Optional[int] = None
                      ) -> np.ndarray:
  """SAD figure: one row per prompt with its K partial candidates at step T, each labelled
  with its score; the winner framed in green.

  candidates uint8 [P, K, H, W, 3]; scores [P, K]; winner [P]. Returns uint8 [H', W', 3].
  """
  from PIL import Image, ImageDraw
  p, k, h, w, _ = candidates.shape
  cw, ch = w * scale, h * scale
  label_h, title_h, pad = 14, 14, 6
  fig = Image.new("RGB", (k * (cw + pad) + pad, p * (ch + label_h + title_h + pad) + pad),
                  (255, 255, 255))
  draw = ImageDraw.Draw(fig)
  for i in range(p):
    y0 = pad + i * (ch + label_h + title_h + pad)
    title = prompts[i] if step is None else f"{prompts[i]}  (candidates at step {step})"
    draw.text((pad, y0), title[:120], fill=(0, 0, 0))
    for j in range(k):
      x0 = pad + j * (cw + pad)
      img = Image.fromarray(np.asarray(candidates[i, j], np.uint8)).resize((cw, ch),
                                                                           Image.NEAREST)
      fig.paste(img, (x0, y0 + title_h))
      best = int(winner[i]) == j
      if best:
        draw.rectangle([x0 - 2, y0 + title_h - 2, x0 + cw + 1, y0 + title_h + ch + 1],
                       outline=(0, 170, 0), width=3)
      draw.text((x0, y0 + title_h + ch + 1),
                f"{float(scores[i, j]):+.3f}" + ("  winner" if best else ""),
                fill=(0, 130, 0) if best else (0, 0, 0))
  return np.asarray(fig)
