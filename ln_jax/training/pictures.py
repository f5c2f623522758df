"""Pictures a task draws at each evaluation (`Task.pictures`): PNG files and TensorBoard images.

Each evaluation replaces <run>/pictures/<name>.png (written through a temporary file and a rename,
so a viewer never reads half a file); the last evaluation of the run also keeps
<run>/pictures/final_<name>.png. TensorBoard shows them under `pictures/<name>` against the
number of training examples seen, like the scalars. `tile` lays images out in a grid.
"""

from __future__ import annotations

import io
import os
import re

import jax
import numpy as np

from ln_jax.training import rundir

PICTURES_DIR = 'pictures'
FINAL_PREFIX = 'final_'
_PICTURES_STREAM = 0x70696373  # folded into the run's key: the same draws at every evaluation
_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


def to_uint8(values) -> np.ndarray:
  """Values in [0, 1] (probabilities, intensities) as uint8 0..255."""
  return np.round(np.clip(np.asarray(values, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def tile(images, columns: int, pad: int = 1, background: int = 255) -> np.ndarray:
  """Images [N, H, W] (or [N, H, W, C]) as one grid image, `columns` wide, rows filled in order,
  `pad` pixels of `background` between and around them."""
  images = np.asarray(images)
  n, h, w = images.shape[:3]
  rows = -(-n // columns)
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad) + images.shape[3:],
                 background, images.dtype)
  for k in range(n):
    top, left = pad + (k // columns) * (h + pad), pad + (k % columns) * (w + pad)
    grid[top:top + h, left:left + w] = images[k]
  return grid


def check_picture(name: str, image) -> np.ndarray:
  """`image` as a uint8 [H, W] or [H, W, C] array (C = 1, 3 or 4); ValueError otherwise."""
  image = np.asarray(image)
  if not _NAME.match(name):
    raise ValueError(f'picture name {name!r} is not a plain file name; use letters, digits, '
                     '_, - and .')
  if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
      image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
    raise ValueError(f'picture {name!r} is {image.dtype} {image.shape}; Task.pictures must '
                     'return uint8 images [H, W] or [H, W, C] with C = 1, 3 or 4')
  return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def draw(task, model, config, state) -> dict:
  """The pictures of one run's `state` (no seed axis): the task's hook with the evaluated
  variables and the run's picture key."""
  from ln_jax.training import step as step_lib
  key = jax.random.fold_in(state.key, _PICTURES_STREAM)
  drawn = task.pictures(model, step_lib.variables(state), config, key)
  return {name: check_picture(name, image) for name, image in drawn.items()}


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W] (gray) or [H, W, 3|4] (RGB, RGBA) image, through Pillow (which
  matplotlib depends on)."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def save(workdir: str, pictures: dict, final: bool) -> None:
  """<workdir>/pictures/<name>.png for each picture, and final_<name>.png when `final`."""
  folder = os.path.join(workdir, PICTURES_DIR)
  os.makedirs(folder, exist_ok=True)
  for name, image in pictures.items():
    for prefix in ('', FINAL_PREFIX) if final else ('',):
      rundir.write_bytes_atomic(os.path.join(folder, f'{prefix}{name}.png'),
                                encode_png(image))
