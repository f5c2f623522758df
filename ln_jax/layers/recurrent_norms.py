"""How a recurrent cell normalizes its summed inputs, one time step at a time.

`NormSpec` is the choice (kind and settings); `StepNorm` the pure normalization of one step,
safe inside `lax.scan`; `RecurrentNorm` the Linen module holding a normalizer's gain and shift
and, for recurrent BN, running averages per time step. `step_norm_at` and `fold_at` are the
single-step reading and update of those running averages, shared by the Linen cells
(`rnn_cells`) and the NNX cells (`ln_jax.nnx.cells`), which hold the same arrays as variables of
their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import batch_renorm
from ln_jax.layers import group_norm
from ln_jax.layers import statistics

PER_EXAMPLE_NORMS = ('layer', 'group')  # gains 1, with shifts, where the paper's LN is
# Recurrent BN's running averages per step: the mean and the variance (BN) or the standard
# deviation (batch renorm, averaged as in Ioffe's paper).
RUNNING_SPREAD = {'batch': 'var', 'batch_renorm': 'std'}


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """How a recurrent layer normalizes its summed inputs.

  `max_steps` is BN's T_max (None: the sequence length at initialization).
  `eval_batch_stats` makes BN use the batch statistics in evaluation too. `groups` is GN's
  number of groups; `renorm` Batch Renorm's clipping schedule.
  """
  kind: str = 'layer'
  epsilon: float = statistics.DEFAULT_EPSILON
  fast_variance: bool = False
  momentum: float = 0.99
  unbiased_variance: bool = False
  gamma_init: float = 0.1
  max_steps: int | None = None
  eval_batch_stats: bool = False
  groups: int = group_norm.DEFAULT_GROUPS
  renorm: batch_renorm.RenormSchedule = batch_renorm.RenormSchedule()


@dataclasses.dataclass(frozen=True)
class StepNorm:
  """A pure normalization of one step's x [B, F]: over F (layer) or over the batch (batch).

  Safe inside `lax.scan`: it holds arrays, not module state. For BN, `stats` = (mean, var) [F]
  normalizes with given (running) statistics; None normalizes with the batch statistics of the
  examples that `mask` [B] marks real, and returns them as (mean, var, count) for the update.
  `centered` (LN only) says x already has mean 0 over F, so only its variance is computed.
  """
  kind: str
  scale: Any = None
  bias: Any = None
  epsilon: float = statistics.DEFAULT_EPSILON
  fast_variance: bool = False
  unbiased_variance: bool = False
  eval_stats: Any = None  # BN evaluation: running (mean, var) of every step, [T, F]
  centered: bool = False
  groups: int = 1
  # Batch renorm: running (mean, std) of every step in `eval_stats`, used in training too, and
  # training's clipping bounds.
  training: bool = False
  r_max: Any = 1.0
  d_max: Any = 0.0

  def __call__(self, x_BxF, mask_B=None, stats=None):
    if self.kind == 'none':
      return x_BxF, None
    batch_stats = None
    if self.kind == 'layer' and self.centered:
      centered = jnp.asarray(x_BxF, jnp.float32)
      var = jnp.mean(jnp.square(centered), -1, keepdims=True)
    elif self.kind == 'layer':
      centered, _, var, _ = statistics.centered_moments(
          x_BxF, (1,), use_fast_variance=self.fast_variance)
    elif self.kind == 'group':
      return self._affine(group_norm.group_normalize(
          x_BxF, self.groups, self.epsilon, self.fast_variance)), None
    elif self.kind == 'batch_renorm':
      return self._renorm(x_BxF, mask_B, stats)
    elif stats is None:
      centered, mean, var, count = statistics.centered_moments(
          x_BxF, (0,), mask=None if mask_B is None else mask_B[:, None],
          use_fast_variance=self.fast_variance)
      if self.unbiased_variance:
        var = var * count / jnp.maximum(count - 1.0, 1.0)
      batch_stats = (mean[0], var[0], jnp.reshape(count, (-1,))[0])
    else:
      mean, var = stats
      centered = jnp.asarray(x_BxF, jnp.float32) - mean
    return self._affine(centered * lax.rsqrt(var + self.epsilon)), batch_stats

  def _affine(self, y):
    if self.scale is not None:
      y = y * self.scale
    if self.bias is not None:
      y = y + self.bias
    return y

  def _renorm(self, x_BxF, mask_B, stats):
    """Batch renorm of one step with running (mean, std) `stats`; in training also returns
    (mean_B, sigma_B, count) for the running averages."""
    mean, std = stats
    if not self.training:
      return self._affine((jnp.asarray(x_BxF, jnp.float32) - mean) / std), None
    centered, mean_B, var_B, count = statistics.centered_moments(
        x_BxF, (0,), mask=None if mask_B is None else mask_B[:, None],
        use_fast_variance=self.fast_variance)
    mean_B, sigma_B = mean_B[0], jnp.sqrt(var_B[0] + self.epsilon)
    r, d = batch_renorm.corrections(mean_B, sigma_B, mean, std, self.r_max, self.d_max)
    y = self._affine(centered / sigma_B * r + d)
    return y, (mean_B, sigma_B, jnp.reshape(count, (-1,))[0])


class RecurrentNorm(nn.Module):
  """Parameters (and BN running averages, one row per step up to T_max) of one normalization.

  `use_bias` False gives Cooijmans' shift 0; `centered_input` (LN) promises inputs with mean 0
  over the features. Call it to get the pure `StepNorm` for a sequence;
  `update` folds the batch statistics of the steps into the running averages after the scan.
  """
  spec: NormSpec
  features: int
  max_steps: int
  use_bias: bool = True
  centered_input: bool = False

  def setup(self):
    kind, shape = self.spec.kind, (self.features,)
    if kind == 'none':
      return
    self.scale = self.param('scale', nn.initializers.constant(initial_gain(self.spec)), shape,
                            jnp.float32)
    self.bias = (self.param('bias', nn.initializers.zeros, shape, jnp.float32)
                 if self.use_bias else None)
    if kind in RUNNING_SPREAD:
      rows = (self.max_steps, self.features)
      self.running_mean = self.variable('batch_stats', 'mean', jnp.zeros, rows, jnp.float32)
      self.running_var = self.variable('batch_stats', RUNNING_SPREAD[kind], jnp.ones, rows,
                                       jnp.float32)
    if kind == 'batch_renorm':
      self.step = self.variable('batch_stats', 'step', lambda: jnp.zeros((), jnp.int32))

  def __call__(self, num_steps: int, train: bool) -> StepNorm:
    spec = self.spec
    if spec.kind == 'none':
      return StepNorm('none')
    eval_stats, r_max, d_max = None, 1.0, 0.0
    if spec.kind == 'batch_renorm' or (
        spec.kind == 'batch' and not (train or spec.eval_batch_stats)):
      # Steps past T_max reuse the statistics of T_max.
      rows = jnp.minimum(jnp.arange(num_steps), self.running_mean.value.shape[0] - 1)
      eval_stats = (jnp.asarray(self.running_mean.value)[rows],
                    jnp.asarray(self.running_var.value)[rows])
    if spec.kind == 'batch_renorm':
      r_max, d_max = spec.renorm(self.step.value)
    return StepNorm(spec.kind, self.scale, self.bias, spec.epsilon, spec.fast_variance,
                    spec.unbiased_variance, eval_stats, self.centered_input, spec.groups,
                    train, r_max, d_max)

  def update(self, batch_stats) -> None:
    """Momentum update of the running averages of steps < T_max that saw a real example (the
    standard deviations for batch renorm, as in Ioffe's paper; the variances for BN)."""
    if (batch_stats is None or self.is_initializing()
        or not self.is_mutable_collection('batch_stats')):
      return
    mean, var, count = batch_stats
    n = min(mean.shape[0], self.running_mean.value.shape[0])
    seen = count[:n, None] > 0
    m = self.spec.momentum
    for running, value in ((self.running_mean, mean), (self.running_var, var)):
      current = jnp.asarray(running.value)  # restored statistics may be NumPy arrays
      old = current[:n]
      new = jnp.where(seen, m * old + (1.0 - m) * value[:n], old)
      running.value = current.at[:n].set(new)
    if self.spec.kind == 'batch_renorm':
      self.step.value = self.step.value + 1


def initial_gain(spec: NormSpec) -> float:
  """The gains' initial value: 1 where the paper's LN is, `gamma_init` for BN (Cooijmans)."""
  return 1.0 if spec.kind in PER_EXAMPLE_NORMS else spec.gamma_init


def step_norm_at(spec: NormSpec, scale, bias, centered_input: bool, running, counter, t,
                 train: bool, folds: bool):
  """(the pure `StepNorm` of time step t, the running statistics it normalizes with or None).

  `running` is recurrent BN's (mean, var or std) [T_max, F] (None for the other kinds): step t
  reads row min(t, T_max - 1). `counter` is batch renorm's step counter; `folds` says that this
  call's batch statistics fold into the running averages (`fold_at`, which advances the counter
  at step 0), so the later steps step back to the sequence's count.
  """
  if spec.kind == 'none':
    return StepNorm('none'), None
  stats, r_max, d_max = None, 1.0, 0.0
  if spec.kind == 'batch_renorm' or (
      spec.kind == 'batch' and not (train or spec.eval_batch_stats)):
    row = jnp.minimum(t, running[0].shape[0] - 1)
    stats = tuple(jnp.asarray(r)[row] for r in running)
  if spec.kind == 'batch_renorm':
    if train and folds:
      counter = counter - (t > 0).astype(counter.dtype)
    r_max, d_max = spec.renorm(counter)
  return StepNorm(spec.kind, scale, bias, spec.epsilon, spec.fast_variance,
                  spec.unbiased_variance, centered=centered_input, groups=spec.groups,
                  training=train, r_max=r_max, d_max=d_max), stats


def fold_at(spec: NormSpec, running, counter, t, batch_stats):
  """`RecurrentNorm.update` for the one step t: (running, counter) with row t moved towards the
  step's batch statistics (mean, var or sigma, count) by momentum, if t < T_max and the step had
  a real example; batch renorm's counter advances at step 0 (once per sequence)."""
  mean, var, count = lax.stop_gradient(batch_stats)
  rows = running[0].shape[0]
  row = jnp.minimum(t, rows - 1)
  fold = (t < rows) & (count > 0)
  m = spec.momentum
  folded = []
  for current, value in zip(running, (mean, var)):
    current = jnp.asarray(current)  # restored statistics may be NumPy arrays
    old = current[row]
    folded.append(current.at[row].set(jnp.where(fold, m * old + (1.0 - m) * value, old)))
  if spec.kind == 'batch_renorm':
    counter = counter + (t == 0).astype(counter.dtype)
  return tuple(folded), counter
