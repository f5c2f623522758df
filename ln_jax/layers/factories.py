"""From a config to the layers a model builds: `make_norm` (the normalizer) and `make_dense`."""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn

from ln_jax.layers import batch_norm
from ln_jax.layers import batch_renorm
from ln_jax.layers import dense
from ln_jax.layers import group_norm
from ln_jax.layers import layer_norm
from ln_jax.layers import weight_norm

NormFactory = Callable[..., nn.Module]
NORMS = ('layer', 'batch', 'rms', 'weight', 'none', 'group', 'batch_renorm')


def make_norm(config) -> NormFactory | None:
  """Maps `config.norm` to a factory `make(train: bool, **overrides) -> nn.Module`, or None.

  The factory hides which normalizer it builds, so one model definition serves all of them.
  Reads config.norm, norm_epsilon, norm_fast_variance, bn_momentum, bn_unbiased_variance,
  bn_eval_stats ('running' | 'batch' | 'population': running averages replaced by the training
  loop, see `training.population`) and bn_ghost_batches (1 when absent); 'group' reads
  gn_groups, 'batch_renorm' bn_momentum and the renorm_* schedule keys. 'weight' normalizes
  the dense layers themselves (see `make_dense`), so like 'none' it has no norm module. 'rms' gets
  a bias: the dense layer before a norm has none, and both papers add b after the normalization,
  f(norm(a) + b).
  """
  name = config.norm
  common = dict(epsilon=config.norm_epsilon, use_fast_variance=config.norm_fast_variance)
  if name in ('none', 'weight'):
    return None
  if name == 'layer':
    def make_layer_norm(train: bool, **overrides):
      del train  # LN is the same in training and evaluation
      return layer_norm.LayerNorm(**{**common, **overrides})
    return make_layer_norm
  if name == 'rms':
    def make_rms_norm(train: bool, **overrides):
      del train  # per-example statistics: the same in training and evaluation
      return layer_norm.RMSNorm(**{'epsilon': config.norm_epsilon, 'use_bias': True, **overrides})
    return make_rms_norm
  if name == 'batch':
    eval_with_batch_stats = config.bn_eval_stats == 'batch'
    def make_batch_norm(train: bool, **overrides):
      return batch_norm.BatchNorm(use_running_average=not (train or eval_with_batch_stats),
                       momentum=config.bn_momentum,
                       unbiased_variance=config.bn_unbiased_variance,
                       **{**common, 'ghost_batches': config.get('bn_ghost_batches', 1),
                          **overrides})
    return make_batch_norm
  if name == 'group':
    def make_group_norm(train: bool, **overrides):
      del train  # per-example statistics, as in LN
      return group_norm.GroupNorm(**{'num_groups': config.gn_groups, **common, **overrides})
    return make_group_norm
  if name == 'batch_renorm':
    schedule = batch_renorm.schedule_from_config(config)
    def make_batch_renorm(train: bool, **overrides):
      return batch_renorm.BatchRenorm(use_running_average=not train, momentum=config.bn_momentum,
                                      schedule=schedule, **{**common, **overrides})
    return make_batch_renorm
  raise ValueError(f'unknown norm {name!r}; choose one of {", ".join(NORMS)}')


def make_dense(config) -> Callable[..., nn.Module]:
  """The dense layer for `config.norm`: weight-normalized for 'weight', else `dense.Dense`
  (`nn.Dense`'s parameters and values); `config.fuse_weight_grad` (default True) says whether
  small-batch weight gradients fuse into the optimizer or are one matrix product."""
  cls = weight_norm.WeightNormDense if config.norm == 'weight' else dense.Dense
  return functools.partial(cls, fuse_weight_grad=config.get('fuse_weight_grad', True))
