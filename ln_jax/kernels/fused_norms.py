"""LayerNorm and RMSNorm over the trailing axes with a closed-form backward pass (custom VJP).

Autodiff of the two-pass LayerNorm differentiates through both reductions and keeps several
[rows, features] intermediates; the closed form needs only x, the per-row statistics and dy:
  x_hat = (x - mean) * r,   r = 1 / sqrt(var + eps),   g = dy * scale,
  dx = r * (g - mean(g) - x_hat * mean(g * x_hat))      (RMSNorm: no mean(g), no centring),
  d scale = sum over rows of dy * x_hat,   d bias = sum over rows of dy.
x_hat is recomputed from x in the backward pass instead of being stored, so the layer keeps
one [rows, 1] triple per row besides its input.

Numerics follow `statistics.centered_moments`: float32 statistics (float64 for float64 inputs),
output in the input's dtype, and the two-pass variance of x shifted by its first entry, so an
input with mean 1e4 and spread 1e-2 keeps its precision.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import statistics


def _rows(x, num_axes: int):
  """x as [rows, features] in the statistics dtype, the features being the last `num_axes`."""
  features = 1
  for n in x.shape[x.ndim - num_axes:]:
    features *= n
  return jnp.reshape(jnp.asarray(x, statistics.stats_dtype(x)), (-1, features))


def _layer_norm_stats(x_NxF, epsilon):
  """(shift, mean of x - shift, 1 / sqrt(var + eps)) per row.

  The mean is kept as shift + mean of the shifted values: rounded to one float at x's
  magnitude it would lose the digits that a small spread around a large mean needs.
  """
  shift = x_NxF[:, :1]
  shifted = x_NxF - shift
  mean = jnp.mean(shifted, -1, keepdims=True)
  var = jnp.mean(jnp.square(shifted - mean), -1, keepdims=True)
  return (shift, mean), lax.rsqrt(var + epsilon)


def _normalized(x_NxF, mean, r):
  if mean is None:
    return x_NxF * r
  shift, shifted_mean = mean
  return ((x_NxF - shift) - shifted_mean) * r


def _affine(x_hat, scale, bias):
  y = x_hat
  if scale is not None:
    y = y * jnp.reshape(jnp.asarray(scale, y.dtype), (-1,))
  if bias is not None:
    y = y + jnp.reshape(jnp.asarray(bias, y.dtype), (-1,))
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _norm(x, scale, bias, num_axes: int, epsilon: float, centre: bool):
  return _norm_fwd(x, scale, bias, num_axes, epsilon, centre)[0]


def _norm_fwd(x, scale, bias, num_axes, epsilon, centre):
  x_NxF = _rows(x, num_axes)
  if centre:
    mean, r = _layer_norm_stats(x_NxF, epsilon)
  else:
    mean = None
    r = lax.rsqrt(jnp.mean(jnp.square(x_NxF), -1, keepdims=True) + epsilon)
  x_hat = _normalized(x_NxF, mean, r)
  y = jnp.reshape(_affine(x_hat, scale, bias), x.shape).astype(x.dtype)
  return y, (x, scale, bias, mean, r)


def _norm_bwd(num_axes, epsilon, centre, saved, dy):
  del epsilon
  x, scale, bias, mean, r = saved
  x_NxF = _rows(x, num_axes)
  x_hat = _normalized(x_NxF, mean, r)
  dy_NxF = _rows(dy, num_axes).astype(x_NxF.dtype)
  g = dy_NxF if scale is None else dy_NxF * jnp.reshape(jnp.asarray(scale, x_NxF.dtype), (-1,))
  inner = x_hat * jnp.mean(g * x_hat, -1, keepdims=True)
  if centre:
    inner = inner + jnp.mean(g, -1, keepdims=True)
  dx = jnp.reshape(r * (g - inner), x.shape).astype(x.dtype)
  d_scale = None if scale is None else jnp.reshape(
      jnp.sum(dy_NxF * x_hat, 0), scale.shape).astype(scale.dtype)
  d_bias = None if bias is None else jnp.reshape(jnp.sum(dy_NxF, 0), bias.shape).astype(bias.dtype)
  return dx, d_scale, d_bias


_norm.defvjp(_norm_fwd, _norm_bwd)


def layer_norm(x, scale=None, bias=None, *, num_axes: int = 1,
               epsilon: float = statistics.DEFAULT_EPSILON):
  """LN over the last `num_axes` axes: (x - mean) / sqrt(var + eps) * scale + bias.

  `scale` and `bias` (or None) have the shape of those axes.
  """
  return _norm(x, scale, bias, num_axes, epsilon, True)


def rms_norm(x, scale=None, bias=None, *, num_axes: int = 1,
             epsilon: float = statistics.DEFAULT_EPSILON):
  """x / sqrt(mean(x^2) + eps) * scale + bias over the last `num_axes` axes (no centring).

  Also LN of inputs whose mean over those axes is 0 by construction (a re-centred kernel's
  projection): the mean is then not computed.
  """
  return _norm(x, scale, bias, num_axes, epsilon, False)
