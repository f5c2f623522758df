"""The one place that maps a run config's normalizer settings to layer keyword arguments.

A config names its normalizer with `config.norm` ('layer', 'batch', ...) and keeps every setting
of it in the `config.norm_options` group (`default_options` lists them). Layers take plain
arguments only; this module turns the group into them, for the feed-forward models (`make_norm`,
`make_dense`), the recurrent cells (`recurrent_spec`) and the config checks (`checks`).

Adding a normalizer: its layer file under `ln_jax/layers/`, one `Normalizer` entry in
`NORMALIZERS` below, and its bad values in that entry's `checks`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import ml_collections

from ln_jax.layers import batch_norm
from ln_jax.layers import batch_renorm
from ln_jax.layers import cells
from ln_jax.layers import dense
from ln_jax.layers import group_norm
from ln_jax.layers import layer_norm
from ln_jax.layers import weight_norm

NormFactory = Callable[..., nn.Module]
EVAL_STATS = ('running', 'batch', 'population')
def default_options() -> ml_collections.ConfigDict:
  """Every normalizer setting a config carries, with its default; each applies to some norms."""
  o = ml_collections.ConfigDict()
  o.epsilon = 1e-5                 # inside the sqrt; the paper's original code value
  o.fast_variance = False          # one-pass variance (loses precision at large means)
  # BatchNorm and batch renorm.
  o.momentum = 0.99                # Flax convention: ra <- m * ra + (1 - m) * batch
  o.unbiased_variance = False      # the paper uses the unbiased variance at batch 4
  o.eval_stats = 'running'         # 'running' averages, 'batch' statistics or 'population'
                                   # statistics of the current weights (Wu & Johnson 2021)
  o.population_batches = 20        # training batches of that population pass
  o.ghost_batches = 1              # statistics per batch_size / n examples ("ghost" batches)
  o.gamma_init = ml_collections.config_dict.placeholder(float)  # gain init; None: 1, and 0.1
                                   # for the recurrent BN cells (Cooijmans et al.)
  o.max_steps = ml_collections.config_dict.placeholder(int)  # recurrent BN's T_max; None: T
  # Group norm: groups of hidden units (1 = LayerNorm); must divide every normalized width.
  o.groups = group_norm.DEFAULT_GROUPS
  # Batch renorm (Ioffe 2017): r clipped to [1/r_max, r_max], d to [-d_max, d_max]; plain BN
  # until renorm_start_step, then linear ramps to r_max, d_max (the paper's steps and values).
  o.renorm_r_max = 3.0
  o.renorm_d_max = 5.0
  o.renorm_start_step = 5000
  o.renorm_r_max_step = 40000
  o.renorm_d_max_step = 25000
  return o


def _renorm_schedule(o) -> batch_renorm.RenormSchedule:
  return batch_renorm.RenormSchedule(r_max=o.renorm_r_max, d_max=o.renorm_d_max,
                                     start_step=o.renorm_start_step,
                                     r_max_step=o.renorm_r_max_step,
                                     d_max_step=o.renorm_d_max_step)


def _scale_init(o) -> dict:
  return {} if o.gamma_init is None else {'scale_init': nn.initializers.constant(o.gamma_init)}


def _spatial_axes(spatial: bool) -> dict:
  """Per-example norms of an image [B, H, W, C]: statistics over H, W, C, a gain per channel."""
  return {'reduction_axes': (-3, -2, -1), 'feature_axes': -1} if spatial else {}


def _layer(o, train, spatial):
  del train  # LN is the same in training and evaluation
  return layer_norm.LayerNorm, dict(epsilon=o.epsilon, use_fast_variance=o.fast_variance,
                                    **_spatial_axes(spatial), **_scale_init(o))


def _rms(o, train, spatial):
  del train
  # A bias: the dense layer before a norm has none, and the papers add b after it.
  return layer_norm.RMSNorm, dict(epsilon=o.epsilon, use_bias=True, **_spatial_axes(spatial),
                                  **_scale_init(o))


def _batch(o, train, spatial):
  del spatial  # statistics over every axis but the last: B (and H, W) per feature
  return batch_norm.BatchNorm, dict(
      use_running_average=not (train or o.eval_stats == 'batch'), momentum=o.momentum,
      unbiased_variance=o.unbiased_variance, epsilon=o.epsilon,
      use_fast_variance=o.fast_variance, ghost_batches=o.ghost_batches, **_scale_init(o))


def _group(o, train, spatial):
  del train  # per-example statistics, as in LN
  return group_norm.GroupNorm, dict(num_groups=o.groups, epsilon=o.epsilon,
                                    use_fast_variance=o.fast_variance,
                                    reduction_axes=(-3, -2) if spatial else (), **_scale_init(o))


def _batch_renorm(o, train, spatial):
  del spatial
  return batch_renorm.BatchRenorm, dict(use_running_average=not train, momentum=o.momentum,
                                        schedule=_renorm_schedule(o), epsilon=o.epsilon,
                                        use_fast_variance=o.fast_variance, **_scale_init(o))


def _group_checks(o, widths):
  widths = widths or ()
  return [(isinstance(o.groups, int) and o.groups >= 1 and all(w % o.groups == 0 for w in widths),
           f'norm_options.groups={o.groups} must be a positive divisor of every normalized '
           f'width {tuple(widths)}; e.g. --config.norm_options.groups=1 (LayerNorm)')]


def _batch_checks(o, widths):
  del widths
  return [
      (0 <= o.momentum < 1, f'norm_options.momentum={o.momentum} must be in [0, 1)'),
      (o.eval_stats in EVAL_STATS,
       f"norm_options.eval_stats={o.eval_stats!r} must be one of {', '.join(EVAL_STATS)}"),
      (o.eval_stats != 'population' or (isinstance(o.population_batches, int)
                                        and o.population_batches >= 1),
       f'norm_options.population_batches={o.population_batches} must be a positive number of '
       'batches'),
      (isinstance(o.ghost_batches, int) and o.ghost_batches >= 1,
       f'norm_options.ghost_batches={o.ghost_batches} must be >= 1'),
  ]


def _renorm_checks(o, widths):
  start = o.renorm_start_step
  return _batch_checks(o, widths) + [
      (o.renorm_r_max >= 1, f'norm_options.renorm_r_max={o.renorm_r_max} must be >= 1 '
                            '(1: no scale correction)'),
      (o.renorm_d_max >= 0, f'norm_options.renorm_d_max={o.renorm_d_max} must be >= 0 '
                            '(0: no shift correction)'),
      (start >= 0, f'norm_options.renorm_start_step={start} must be >= 0'),
      (o.renorm_r_max_step >= start and o.renorm_d_max_step >= start,
       f'norm_options.renorm_r_max_step={o.renorm_r_max_step} and renorm_d_max_step='
       f'{o.renorm_d_max_step} must be >= renorm_start_step={start}'),
  ]


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """What the framework needs to know of one normalizer.

  `layer(options, train, spatial) -> (module class, keyword arguments)` builds the feed-forward
  layer (None: no norm module, as for 'none' and 'weight'); `batch_dependent`: its training
  output depends on the other examples of the batch (BN's family: population statistics, the
  paper's placement on the logits too, recurrent states that must differ over the batch);
  `recurrent`: the recurrent cells have it; `checks(options, widths)`: its bad values (`widths`
  None when another normalizer is chosen: its settings are still checked, not the widths).
  """
  layer: Callable[..., tuple[type, dict]] | None = None
  batch_dependent: bool = False
  recurrent: bool = True
  checks: Callable[..., list] = lambda o, widths: []


NORMALIZERS = {
    'layer': Normalizer(_layer),
    'batch': Normalizer(_batch, batch_dependent=True, checks=_batch_checks),
    'rms': Normalizer(_rms, recurrent=False),
    'weight': Normalizer(None, recurrent=False),  # normalizes the dense layers: `make_dense`
    'none': Normalizer(None),
    'group': Normalizer(_group, checks=_group_checks),
    'batch_renorm': Normalizer(_batch_renorm, batch_dependent=True, checks=_renorm_checks),
}
NORMS = tuple(NORMALIZERS)
# Norms of the recurrent cells alone, with no feed-forward layer: 'layer_c' (LN of the LSTM's cell
# state, the paper's DRAW cell). The models whose cells take them accept them in their checks.
CELL_ONLY_NORMS = cells.LSTM_ONLY_NORMS
RECURRENT_NORMS = tuple(name for name, n in NORMALIZERS.items() if n.recurrent)
# A conv net takes every norm with a layer (weight norm reparameterizes dense layers only).
CONV_NORMS = ('none',) + tuple(name for name, n in NORMALIZERS.items() if n.layer is not None)


def batch_dependent(norm: str) -> bool:
  return NORMALIZERS[norm].batch_dependent


def uses_population(config) -> bool:
  """Whether evaluations use population statistics (BatchNorm only; the others have none)."""
  return config.norm == 'batch' and config.norm_options.eval_stats == 'population'


def _entry(config) -> Normalizer:
  entry = NORMALIZERS.get(config.norm)
  if entry is None:
    raise ValueError(f'unknown norm {config.norm!r}; choose one of {", ".join(NORMS)}')
  return entry


def make_norm(config) -> NormFactory | None:
  """`config.norm` as a factory `make(train, *, spatial=False, **overrides) -> nn.Module`, or
  None for no norm module. `spatial` says the input is an image [B, H, W, C] (per-example norms
  then take statistics over H, W and C with a gain per channel; batch norms over B, H and W).
  The factory hides which normalizer it builds, so one model definition serves all of them."""
  entry = _entry(config)
  if entry.layer is None:
    return None
  options = config.norm_options

  def make(train: bool, *, spatial: bool = False, **overrides) -> nn.Module:
    cls, kwargs = entry.layer(options, train, spatial)
    return cls(**{**kwargs, **overrides})
  return make


def make_nnx_norm(config):
  """`config.norm` for Flax NNX models: (make(num_features, *, spatial=False, rngs) ->
  ln_jax.nnx module, call(module, x, train) -> y), or None for no norm module. The same entry and
  arguments as `make_norm`; `call` passes BN's family the statistics the Linen layer would use
  (batch statistics in training, running averages or batch statistics in evaluation)."""
  entry = _entry(config)
  if entry.layer is None:
    return None
  from ln_jax import nnx as nnx_layers  # pylint: disable=g-import-not-at-top
  options = config.norm_options

  def make(num_features: int, *, spatial: bool = False, rngs):
    cls, kwargs = entry.layer(options, False, spatial)
    kwargs.pop('use_running_average', None)  # chosen per call, below
    return getattr(nnx_layers, cls.__name__)(num_features, **kwargs, rngs=rngs)

  def call(module, x, train: bool):
    if not entry.batch_dependent:
      return module(x)
    _, kwargs = entry.layer(options, train, False)
    return module(x, use_running_average=kwargs['use_running_average'])
  return make, call


def make_dense(config) -> Callable[..., nn.Module]:
  """The dense layer for `config.norm`: weight-normalized for 'weight', else `dense.Dense`
  (`nn.Dense`'s parameters and values); `config.fuse_weight_grad` says whether small-batch
  weight gradients fuse into the optimizer or are one matrix product."""
  cls = weight_norm.WeightNormDense if config.norm == 'weight' else dense.Dense
  return functools.partial(cls, fuse_weight_grad=config.fuse_weight_grad)


def recurrent_spec(config) -> cells.NormSpec:
  """The recurrent cells' normalization (`cells.NormSpec`) for `config.norm`."""
  o = config.norm_options
  gamma = {} if o.gamma_init is None else {'gamma_init': o.gamma_init}
  return cells.NormSpec(kind=config.norm, epsilon=o.epsilon, fast_variance=o.fast_variance,
                        momentum=o.momentum, unbiased_variance=o.unbiased_variance,
                        max_steps=o.max_steps, eval_batch_stats=o.eval_stats == 'batch',
                        groups=o.groups, renorm=_renorm_schedule(o), **gamma)


def checks(config, widths=()) -> list[tuple[bool, str]]:
  """(condition, one-line message) pairs for `config.norm` and its options; `widths` are the
  widths the model normalizes (for group norm's divisibility)."""
  o = config.norm_options
  if config.norm not in NORMALIZERS and config.norm not in CELL_ONLY_NORMS:
    return [(False, f'unknown norm {config.norm!r}; choose one of '
                    f'{", ".join(NORMS + CELL_ONLY_NORMS)}')]
  # Every normalizer's settings are checked, so a bad value fails whichever norm is chosen; the
  # widths only for the chosen one.
  out = [
      (o.epsilon >= 0, f'norm_options.epsilon={o.epsilon} must be >= 0'),
      (o.gamma_init is None or o.gamma_init > 0,
       f'norm_options.gamma_init={o.gamma_init} must be positive (or unset)'),
      (o.max_steps is None or o.max_steps > 0,
       f'norm_options.max_steps={o.max_steps} must be positive, or unset for the sequence '
       'length'),
  ] + (NORMALIZERS[config.norm].checks(o, widths) if config.norm in NORMALIZERS else [])
  for name, entry in NORMALIZERS.items():
    if name != config.norm:
      out += [check for check in entry.checks(o, None) if check not in out]
  return out
