"""The classifiers of the MNIST task: `create_model(config)` builds the one `model.name` names.

The normalizer arrives as a factory (`ln_jax.norms.make_norm`), so no model knows which it gets.
"""

from __future__ import annotations

import jax.numpy as jnp

from ln_jax import data as data_lib
from ln_jax import norms
from ln_jax.models import conv
from ln_jax.models import recurrent
from ln_jax.models.mlp import ACTIVATIONS
from ln_jax.models.mlp import MLP

MODELS = ('mlp', 'conv', 'recurrent')
APIS = ('linen', 'nnx')  # the MLP is written in both


def norm_logits_default(norm: str) -> bool:
  """The paper's placement: BN (and its batch renorm variant) on every layer, logits included;
  LN (and the per-example norms) on hidden layers only."""
  return norms.batch_dependent(norm)


def create_model(config):
  """Builds the model that `config.model.name` names."""
  name = config.model.name
  if name == 'mlp':
    norm_logits = config.model.norm_logits
    if norm_logits is None:
      norm_logits = norm_logits_default(config.norm)
    if config.model.api == 'nnx':
      from ln_jax.models import mlp_nnx  # pylint: disable=g-import-not-at-top
      return mlp_nnx.create(in_features=data_lib.NUM_PIXELS,
                            hidden_sizes=tuple(config.model.hidden_sizes),
                            num_classes=config.model.num_classes,
                            activation=ACTIVATIONS[config.model.activation],
                            norm=norms.make_nnx_norm(config), norm_logits=norm_logits,
                            weight_norm=config.norm == 'weight',
                            fuse_weight_grad=config.fuse_weight_grad,
                            dtype=jnp.dtype(config.dtype))
    return MLP(hidden_sizes=tuple(config.model.hidden_sizes),
               num_classes=config.model.num_classes,
               activation=ACTIVATIONS[config.model.activation],
               norm=norms.make_norm(config),
               norm_logits=norm_logits,
               dense=norms.make_dense(config),  # every layer, logits too, for norm='weight'
               dtype=jnp.dtype(config.dtype))
  if name == 'conv':
    return conv.ConvNet(features=tuple(config.model.features),
                        hidden_size=config.model.hidden_size,
                        num_classes=config.model.num_classes,
                        image_shape=data_lib.IMAGE_SHAPE + (1,),
                        norm=norms.make_norm(config), dtype=jnp.dtype(config.dtype))
  if name == 'recurrent':
    return recurrent.create_classifier(config)
  raise ValueError(f'unknown model {name!r}; choose one of {", ".join(MODELS)}')


def normalized_widths(config) -> tuple:
  """The widths a group norm splits: the MLP's hidden layers (and logits), the conv net's
  channels and dense layer, or the cells' H."""
  m = config.model
  if m.name == 'recurrent':
    return (m.hidden_size,)  # the cells normalize H, 2H or 4H units: H divisible suffices
  if m.name == 'conv':
    return tuple(m.features) + (m.hidden_size,)
  if m.name != 'mlp' or config.norm not in norms.NORMALIZERS:
    return ()  # the checks name the unknown model or norm
  norm_logits = m.norm_logits
  if norm_logits is None:
    norm_logits = norm_logits_default(config.norm)
  return tuple(m.hidden_sizes) + ((m.num_classes,) if norm_logits else ())


def _positive_ints(values) -> bool:
  return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def config_checks(config) -> list[tuple[bool, str]]:
  """(condition, one-line message) pairs for `config.model`."""
  m = config.model
  checks = [(m.name in MODELS, f'unknown model.name {m.name!r}; choose one of '
                               f'{", ".join(MODELS)}')]
  if m.name == 'mlp':
    sizes = tuple(m.hidden_sizes)
    checks += [
        (config.norm in norms.NORMS, f'norm={config.norm!r} normalizes recurrent cells only; '
                                     f'choose one of {", ".join(norms.NORMS)}'),
        (_positive_ints(sizes), f'model.hidden_sizes={sizes} must be positive integers, e.g. '
                                '--config.model.hidden_sizes=500,500'),
        (len(sizes) > 0, 'model.hidden_sizes=() is empty: the MLP would be one linear layer '
                         'with nothing to normalize; give at least one layer, e.g. '
                         '--config.model.hidden_sizes=1000,1000'),
        (m.activation in ACTIVATIONS, f'unknown model.activation {m.activation!r}; choose one '
                                      f'of {", ".join(ACTIVATIONS)}'),
        (m.api in APIS, f'unknown model.api {m.api!r}; choose one of {", ".join(APIS)}'),
    ]
  if m.name == 'conv':
    features = tuple(m.features)
    checks += [
        (config.norm in norms.CONV_NORMS, f'norm={config.norm!r} has no convolutional version; '
                                          f'choose one of {", ".join(norms.CONV_NORMS)}'),
        (_positive_ints(features) and len(features) > 0,
         f'model.features={features} must be one or more positive channel counts, e.g. '
         '--config.model.features=32,64'),
        (2 ** len(features) <= min(data_lib.IMAGE_SHAPE),
         f'model.features has {len(features)} conv layers; each halves the 28x28 image, so '
         'use at most 4'),
        (_positive_ints((m.hidden_size,)), f'model.hidden_size={m.hidden_size} must be positive'),
    ]
  if m.name == 'recurrent':
    checks += recurrent.config_checks(config)
  if m.name == 'recurrent':
    ghost = config.norm_options.ghost_batches
    checks.append((ghost == 1, f'norm_options.ghost_batches={ghost} applies to the MLP\'s '
                               f'BatchNorm only; leave it at 1 for model.name={m.name}'))
  return checks
