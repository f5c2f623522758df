"""Feed-forward models; the normalizer arrives as a factory so the model does not know which."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ln_jax.layers import dense as dense_lib
from ln_jax import layers
from ln_jax.models import recurrent

MODELS = ('mlp', 'recurrent')
ACTIVATIONS = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'gelu': nn.gelu,
    'sigmoid': nn.sigmoid,
}


class MLP(nn.Module):
  """Dense -> norm -> activation per hidden layer, then Dense (-> norm) to the logits.

  A dense layer followed by a normalizer with a bias has no bias of its own: the normalizer
  subtracts the mean, which would cancel it.
  """
  hidden_sizes: Sequence[int] = (1000, 1000)
  num_classes: int = 10
  activation: Callable[[Any], Any] = nn.relu
  norm: layers.NormFactory | None = None
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


def norm_logits_default(norm: str) -> bool:
  """The paper's placement: BN (and its batch renorm variant) on every layer, logits included;
  LN (and the per-example norms) on hidden layers only."""
  return norm in ('batch', 'batch_renorm')


def create_model(config) -> nn.Module:
  """Builds the model that `config.model.name` names."""
  name = config.model.name
  if name == 'mlp':
    norm_logits = config.norm_logits
    if norm_logits is None:
      norm_logits = norm_logits_default(config.norm)
    return MLP(hidden_sizes=tuple(config.model.hidden_sizes),
               num_classes=config.model.num_classes,
               activation=ACTIVATIONS[config.model.activation],
               norm=layers.make_norm(config),
               norm_logits=norm_logits,
               dense=layers.make_dense(config),  # every layer, logits too, for norm='weight'
               dtype=jnp.dtype(config.dtype))
  if name == 'recurrent':
    return recurrent.create_classifier(config)
  raise ValueError(f'unknown model {name!r}; choose one of {", ".join(MODELS)}')
