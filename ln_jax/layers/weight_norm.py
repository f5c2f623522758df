"""Weight normalization (Salimans & Kingma, 2016) as a dense layer."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ln_jax.layers import dense
from ln_jax.layers import statistics


class WeightNormDense(dense.Dense):
  """A dense layer with weight normalization (Salimans & Kingma, 2016): w_j = g_j v_j / ||v_j||.

  `kernel` holds the directions v, [in, out] like `nn.Dense` (v_j is column j, the weights of
  output unit j); `scale` holds the lengths g, one per output unit. g starts at the column norms
  of the initial v, so the layer starts with exactly the weights `kernel_init` drew, as the plain
  `nn.Dense` would. The norms are computed in float32 (or wider) whatever `dtype` is.
  """

  def weights(self, in_features: int):
    kernel = super().weights(in_features)
    scale = self.param('scale', lambda _: jnp.linalg.norm(kernel, axis=0))
    return weight_normalize(kernel, scale)


def weight_normalize(kernel, scale):
  """g_j v_j / ||v_j|| for the columns v_j of `kernel` [in, out], in float32 or wider."""
  v = jnp.asarray(kernel, statistics.stats_dtype(kernel))
  return v * (scale * lax.rsqrt(jnp.sum(jnp.square(v), axis=0)))
