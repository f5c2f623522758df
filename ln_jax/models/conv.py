"""A small MNIST convolutional network for the paper's Section 6.7 comparison.

conv 3x3 -> norm -> ReLU -> 2x2 max-pool, per entry of `features`, then Dense -> norm -> ReLU
and Dense to the logits. The norm factory gets `spatial=True` for the conv layers: per-example
norms (LN, RMS, group) then take their statistics over each example's H, W and C (LN "over each
example's C, H, W per layer", a gain and bias per channel), batch norms over B, H and W per
channel. Convolutions followed by a norm have no bias (the norm's replaces it).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvNet(nn.Module):
  features: Sequence[int] = (32, 64)
  hidden_size: int = 128
  num_classes: int = 10
  image_shape: tuple = (28, 28, 1)
  norm: Callable[..., nn.Module] | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxP, train: bool = False):
    h = jnp.asarray(x_BxP, self.dtype).reshape((x_BxP.shape[0],) + tuple(self.image_shape))
    for i, width in enumerate(self.features):
      h = nn.Conv(width, (3, 3), use_bias=self.norm is None, dtype=self.dtype,
                  name=f'conv_{i}')(h)
      if self.norm is not None:
        h = self.norm(train, spatial=True, name=f'norm_{i}')(h)
      h = nn.max_pool(nn.relu(h), (2, 2), strides=(2, 2))
    h = h.reshape(h.shape[0], -1)
    h = nn.Dense(self.hidden_size, use_bias=self.norm is None, dtype=self.dtype,
                 name='dense')(h)
    if self.norm is not None:
      h = self.norm(train, name='norm_dense')(h)
    h = nn.relu(h)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='logits')(h)
    return jnp.asarray(logits, jnp.float32)
