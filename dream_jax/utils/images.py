"""PNG helpers: sample grids (optionally captioned with their prompts) and the SAD candidate
figure. Pillow and host numpy only, so the trainer, the sampler CLI, the evaluators and the
notebooks share them without importing model code."""
from __future__ import annotations

import math
import os
import textwrap
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


def captioned_grid(images: np.ndarray, captions: Sequence[str], ncol: Optional[int] = None, *,
                   scale: int = 0, pad: int = 4, line_chars: int = 0) -> np.ndarray:
  """uint8 [N, H, W, 3] + N captions -> one uint8 grid image, each tile with its caption
  below it (word-wrapped). Tiles are enlarged by `scale` (nearest neighbour; 0 = so that a
  tile is at least 128 px wide, since 32 px tiles would carry unreadable captions)."""
  from PIL import Image, ImageDraw
  images = np.asarray(images, np.uint8)
  n, h, w, _ = images.shape
  if len(captions) != n:
    raise ValueError(f"{n} images but {len(captions)} captions")
  scale = scale or max(1, -(-128 // w))
  tw, th = w * scale, h * scale
  line_chars = line_chars or max(8, tw // 6)   # the default bitmap font is ~6 px per char
  wrapped = [textwrap.wrap(str(c), line_chars)[:4] or [""] for c in captions]
  text_h = 11 * max(len(x) for x in wrapped) + 4
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  fig = Image.new("RGB", (ncol * (tw + pad) + pad, nrow * (th + text_h + pad) + pad),
                  (255, 255, 255))
  draw = ImageDraw.Draw(fig)
  for i in range(n):
    r, q = divmod(i, ncol)
    x0, y0 = pad + q * (tw + pad), pad + r * (th + text_h + pad)
    fig.paste(Image.fromarray(images[i]).resize((tw, th), Image.NEAREST), (x0, y0))
    for j, line in enumerate(wrapped[i]):
      draw.text((x0, y0 + th + 2 + 11 * j), line, fill=(0, 0, 0))
  return np.asarray(fig)


def save_grid_and_singles(images: np.ndarray, out_path: str, ncol: Optional[int] = None,
                          captions: Optional[Sequence[str]] = None) -> list[str]:
  """Writes the grid at `out_path` (captioned when `captions` are given) and one PNG per
  image beside it (`<stem>_<i>.png`, uncaptioned, at the model's resolution)."""
  grid = make_grid(images, ncol) if captions is None else captioned_grid(images, captions, ncol)
  paths = [save_png(grid, out_path)]
  stem, ext = os.path.splitext(out_path)
  for i, img in enumerate(np.asarray(images)):
    paths.append(save_png(img, f"{stem}_{i:03d}{ext or '.png'}"))
  return paths


def undecoded_tokens(tokens: np.ndarray) -> np.ndarray:
  """[..., L, C] tokens of a partial decode -> bool [..., L], True where the token is still
  masked. The decoder keeps masked tokens at exactly 0 (sampled tokens are never exactly 0
  in every channel)."""
  return np.all(np.asarray(tokens) == 0, axis=-1)


def mark_undecoded(images: np.ndarray, undecoded: np.ndarray, cell: int = 2) -> np.ndarray:
  """uint8 [..., H, W, 3] + bool [..., L] (L = gh*gw tokens, raster order) -> a copy with
  every undecoded token's patch drawn as a grey checkerboard, so a partial image shows which
  parts the model has not decided yet (decoded patches are untouched)."""
  images = np.array(images, np.uint8)
  undecoded = np.asarray(undecoded, bool)
  h, w = images.shape[-3:-1]
  g = int(round(math.sqrt(undecoded.shape[-1])))
  if g * g != undecoded.shape[-1] or h % g or w % g:
    raise ValueError(f"{undecoded.shape[-1]} tokens do not tile a {h}x{w} image")
  ph, pw = h // g, w // g
  pix = np.repeat(np.repeat(undecoded.reshape(undecoded.shape[:-1] + (g, g)), ph, -2), pw, -1)
  yy, xx = np.mgrid[:h, :w]
  checker = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 150, 200).astype(np.uint8)
  images[pix] = np.broadcast_to(checker, pix.shape)[pix][:, None]   # [n_masked_px, 1] -> RGB
  return images


def candidates_figure(candidates: np.ndarray, scores: np.ndarray, winner: np.ndarray,
                      prompts: Sequence[str], *, scale: int = 4, step: Optional[int] = None,
                      undecoded: Optional[np.ndarray] = None) -> np.ndarray:
  """SAD figure: one row per prompt with its K partial candidates at step T, each labelled
  with its score; the winner framed in green. With `undecoded` (bool [P, K, L], see
  `undecoded_tokens`) the still-masked tokens are drawn as a grey checkerboard.

  candidates uint8 [P, K, H, W, 3]; scores [P, K]; winner [P]. Returns uint8 [H', W', 3].
  """
  from PIL import Image, ImageDraw
  if undecoded is not None:
    candidates = mark_undecoded(candidates, undecoded)
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
