"""DRAW's selective attention (Gregor et al. 2015, Section 3.2): Gaussian filterbanks, read, write.

An N x N grid of Gaussian filters is placed on an A x B image (A columns, B rows) by five numbers
a linear map of the decoder state gives, (g~x, g~y, log sigma^2, log delta~, log gamma):

  gx = (A + 1) / 2 * (g~x + 1),   gy = (B + 1) / 2 * (g~y + 1)
  delta = (max(A, B) - 1) / (N - 1) * exp(log delta~)       (N - 1 read as 1 when N = 1)
  mu_x^i = gx + (i - N/2 - 0.5) * delta,   i = 1..N         (the same for y)
  F_X[i, a] = exp(-(a - mu_x^i)^2 / (2 sigma^2)) / Z_X^i,   a = 1..A  (F_Y likewise over b)

Pixel coordinates run from 1, so g~ = 0 centres the grid on the image; Z^i sums the row over a and
is kept above `NORMALIZER_EPSILON` (a filter far outside the image would otherwise divide 0 by 0).
read(x, x^) = gamma * [F_Y x F_X^T, F_Y x^ F_X^T] (2 N^2 numbers);
write(w) = 1 / gamma * F_Y^T w F_X (an image from an N x N patch w).
Images are [B, H, W] (rows, columns); filterbanks F_X [B, N, W] and F_Y [B, N, H].
"""

from __future__ import annotations

import jax.numpy as jnp

NUM_PARAMS = 5  # g~x, g~y, log sigma^2, log delta~, log gamma
NORMALIZER_EPSILON = 1e-8


def filterbank(center_B, variance_B, stride_B, size: int, n: int):
  """F [B, n, size]: row i is the normalized Gaussian at mu^i over pixel positions 1..size."""
  offsets = jnp.arange(1, n + 1, dtype=jnp.float32) - n / 2.0 - 0.5       # i - N/2 - 0.5
  mu_BxN = center_B[:, None] + offsets[None, :] * stride_B[:, None]
  positions = jnp.arange(1, size + 1, dtype=jnp.float32)
  f = jnp.exp(-jnp.square(positions[None, None, :] - mu_BxN[:, :, None])
              / (2.0 * variance_B[:, None, None]))
  return f / jnp.maximum(jnp.sum(f, axis=-1, keepdims=True), NORMALIZER_EPSILON)


def filterbanks(params_Bx5, height: int, width: int, n: int):
  """(F_X [B, n, width], F_Y [B, n, height], gamma [B]) from the five attention numbers."""
  params_Bx5 = jnp.asarray(params_Bx5, jnp.float32)
  gx_, gy_, log_variance, log_stride, log_gamma = (params_Bx5[:, k] for k in range(NUM_PARAMS))
  gx = (width + 1) / 2.0 * (gx_ + 1.0)
  gy = (height + 1) / 2.0 * (gy_ + 1.0)
  stride = (max(width, height) - 1) / max(n - 1, 1) * jnp.exp(log_stride)
  variance = jnp.exp(log_variance)
  f_x = filterbank(gx, variance, stride, width, n)
  f_y = filterbank(gy, variance, stride, height, n)
  return f_x, f_y, jnp.exp(log_gamma)


def glimpse(image_BxHxW, f_x, f_y):
  """F_Y image F_X^T: [B, N, N]."""
  return jnp.einsum('bih,bhw,bjw->bij', f_y, image_BxHxW, f_x)


def read(x_BxHxW, x_hat_BxHxW, f_x, f_y, gamma_B):
  """gamma * [F_Y x F_X^T, F_Y x^ F_X^T], flattened to [B, 2 N^2]."""
  batch = x_BxHxW.shape[0]
  patches = [glimpse(image, f_x, f_y).reshape(batch, -1) for image in (x_BxHxW, x_hat_BxHxW)]
  return gamma_B[:, None] * jnp.concatenate(patches, axis=-1)


def write(patch_BxNxN, f_x, f_y, gamma_B):
  """1 / gamma * F_Y^T w F_X: [B, H, W]."""
  image = jnp.einsum('bih,bij,bjw->bhw', f_y, patch_BxNxN, f_x)
  return image / gamma_B[:, None, None]
