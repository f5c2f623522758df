"""Batch Renormalization (Ioffe, 2017, arXiv 1702.03275, Algorithm 1).

Training normalizes with the batch statistics, then corrects towards the running averages:
  y = (x - mu_B) / sigma_B * r + d,   r = clip(sigma_B / sigma, 1 / r_max, r_max),
                                      d = clip((mu_B - mu) / sigma, -d_max, d_max),
with r and d held constant in the backward pass (stop_gradient), sigma_B = sqrt(var_B + eps).
When the clips are inactive the training output equals the evaluation output (x - mu) / sigma,
which is why the model stops depending on the other examples of its batch.

Running averages as in the paper: mu <- mu + alpha (mu_B - mu), sigma <- sigma + alpha
(sigma_B - sigma) (the standard deviation, not the variance, is averaged), with alpha =
1 - momentum in Flax's convention; they start at mu = 0, sigma = 1.

Warm-up (paper Section 4): r_max = 1 and d_max = 0, i.e. plain BatchNorm, for the first 5000
steps, then relaxed to reach r_max = 3 at 40k steps and d_max = 5 at 25k steps. The paper says
"gradually" without a shape; `RenormSchedule` ramps linearly. The step comes from a counter in
`batch_stats` ('step'), so the layer stays a pure function of its variables and resumes with the
checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import statistics


@dataclasses.dataclass(frozen=True)
class RenormSchedule:
  """The clipping bounds over training: (r_max, d_max) at a given step, the paper's by default.

  r_max rises linearly from 1 at `start_step` to `r_max` at `r_max_step`, d_max from 0 at
  `start_step` to `d_max` at `d_max_step`; before `start_step` the layer is BatchNorm.
  """
  r_max: float = 3.0
  d_max: float = 5.0
  start_step: int = 5000
  r_max_step: int = 40000
  d_max_step: int = 25000

  def __call__(self, step):
    step = jnp.asarray(step, jnp.float32)

    def ramp(end_step):
      span = max(end_step - self.start_step, 1)
      return jnp.clip((step - self.start_step) / span, 0.0, 1.0)
    return (1.0 + (self.r_max - 1.0) * ramp(self.r_max_step),
            self.d_max * ramp(self.d_max_step))


def corrections(mean_B, sigma_B, mean, sigma, r_max, d_max):
  """(r, d) of Algorithm 1, constants for the gradient."""
  r = jnp.clip(sigma_B / sigma, 1.0 / r_max, r_max)
  d = jnp.clip((mean_B - mean) / sigma, -d_max, d_max)
  return lax.stop_gradient(r), lax.stop_gradient(d)


def renormalize(x, mean, std, step, *, mask, schedule, epsilon, use_fast_variance):
  """(Training output of Algorithm 1 before the affine map, batch mean mu_B, batch sigma_B),
  over every axis but the last; `mask` has x's shape without its last axis. Shared by the
  Linen and NNX BatchRenorm."""
  centered, mean_B, var_B, _ = statistics.centered_moments(
      x, tuple(range(x.ndim - 1)), mask=None if mask is None else mask[..., None],
      use_fast_variance=use_fast_variance)
  mean_B, var_B = jnp.reshape(mean_B, (-1,)), jnp.reshape(var_B, (-1,))
  sigma_B = jnp.sqrt(var_B + epsilon)
  r_max, d_max = schedule(step)
  r, d = corrections(mean_B, sigma_B, mean, std, r_max, d_max)
  return centered / sigma_B * r + d, mean_B, sigma_B


class BatchRenorm(nn.Module):
  """Batch Renormalization over every axis but the last (see the module docstring).

  `use_running_average`: evaluation, y = (x - mu) / sigma with the running averages. In training
  the running averages and the step counter advance when `batch_stats` is mutable (not at init).
  `mask` [...] (1 = real example, the input's shape without its last axis) leaves padding out.
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = statistics.DEFAULT_EPSILON
  schedule: RenormSchedule = RenormSchedule()
  use_fast_variance: bool = False
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Callable[..., Any] = nn.initializers.ones
  bias_init: Callable[..., Any] = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, mask=None):
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_std = self.variable('batch_stats', 'std', jnp.ones, (features,), jnp.float32)
    step = self.variable('batch_stats', 'step', lambda: jnp.zeros((), jnp.int32))

    if use_running_average:
      y = (jnp.asarray(x, statistics.stats_dtype(x)) - running_mean.value) / running_std.value
    else:
      y, mean_B, sigma_B = renormalize(
          x, running_mean.value, running_std.value, step.value, mask=mask,
          schedule=self.schedule, epsilon=self.epsilon, use_fast_variance=self.use_fast_variance)
      if not self.is_initializing() and self.is_mutable_collection('batch_stats'):
        alpha = 1.0 - self.momentum
        mean_B, sigma_B = lax.stop_gradient(mean_B), lax.stop_gradient(sigma_B)
        running_mean.value = running_mean.value + alpha * (mean_B - running_mean.value)
        running_std.value = running_std.value + alpha * (sigma_B - running_std.value)
        step.value = step.value + 1
    y = jnp.reshape(y, x.shape)
    y = statistics.affine(self, y, (features,), self.use_scale, self.use_bias, self.scale_init,
                          self.bias_init, self.param_dtype)
    return y.astype(x.dtype)
