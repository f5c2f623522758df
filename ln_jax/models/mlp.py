"""The feed-forward classifier of the paper's Figure 6: Dense -> norm -> activation per layer."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ln_jax.layers import dense as dense_lib

ACTIVATIONS = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'gelu': nn.gelu,
    'sigmoid': nn.sigmoid,
}


class MLP(nn.Module):
  """Dense -> norm -> activation per hidden layer, then Dense (-> norm) to the logits.

  `norm` is a factory `norm(train, name=...) -> module` (`ln_jax.norms.make_norm`), so the model
  does not know which normalizer it gets. A dense layer followed by a normalizer with a bias has
  no bias of its own: the normalizer subtracts the mean, which would cancel it.
  """
  hidden_sizes: Sequence[int] = (1000, 1000)
  num_classes: int = 10
  activation: Callable[[Any], Any] = nn.relu
  norm: Callable[..., nn.Module] | None = None
  norm_logits: bool = False
  dense: Callable[..., nn.Module] = dense_lib.Dense
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxD, train: bool = False):
    h = jnp.asarray(x_BxD, self.dtype).reshape(x_BxD.shape[0], -1)
    widths = list(self.hidden_sizes) + [self.num_classes]
    for i, width in enumerate(widths):
      is_logits = i == len(widths) - 1
      normalized = self.norm is not None and (not is_logits or self.norm_logits)
      h = self.dense(width, use_bias=not normalized, dtype=self.dtype,
                     name='logits' if is_logits else f'dense_{i}')(h)
      if normalized:
        h = self.norm(train, name=f'norm_{i}')(h)
      if not is_logits:
        h = self.activation(h)
    return jnp.asarray(h, jnp.float32)
