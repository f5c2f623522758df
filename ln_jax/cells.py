"""Recurrent layers of the LN paper: LSTM, GRU and vanilla RNN, plain or normalized.

One `RecurrentLayer` runs a whole sequence with `lax.scan`. The normalization (`NormSpec.kind`):
- 'none': the plain cell with a bias.
- 'layer': the paper's cells (Eq. 4 and the supplementary material). LSTM:
  (f, i, o, g) = LN(W_h h) + LN(W_x x) + b, h = sigmoid(o) * tanh(LN(c)), the carried c
  un-normalized; each LN spans all 4H units with its own gain (1) and bias (0). GRU:
  (z, r) = LN(W_h h) + LN(W_x x), h~ = tanh(LN(W x) + sigmoid(r) * LN(U h)),
  h = (1 - sigmoid(z)) h + sigmoid(z) h~. RNN: h = tanh(LN(W_h h + W_x x)).
- 'batch': recurrent BN (Cooijmans et al., 2016): the LN above replaced by BN over the batch with
  statistics and running averages per time step up to T_max (steps beyond reuse those of T_max),
  shift 0 on the W_h h and W_x x terms (the cell's bias b takes its place), gamma init 0.1.

Speed: W_x x (and its normalization, which does not depend on h) is computed for every step at
once before the scan; the scan body does one fused matmul per step. Statistics are float32.
Kernels are stored as [inputs, units] with the gate blocks side by side in the order above.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ln_jax import norms

CELLS = ('lstm', 'gru', 'rnn')
RECURRENT_NORMS = ('none', 'layer', 'batch')
# Units of the fused projection per hidden unit, in gate blocks: f i o g | z r candidate | a.
GATE_BLOCKS = {'lstm': 4, 'gru': 3, 'rnn': 1}


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """How a recurrent layer normalizes its summed inputs.

  `max_steps` is BN's T_max (None: the sequence length at initialization).
  `eval_batch_stats` makes BN use the batch statistics in evaluation too.
  """
  kind: str = 'layer'
  epsilon: float = norms.DEFAULT_EPSILON
  fast_variance: bool = False
  momentum: float = 0.99
  unbiased_variance: bool = False
  gamma_init: float = 0.1
  max_steps: int | None = None
  eval_batch_stats: bool = False


@dataclasses.dataclass(frozen=True)
class StepNorm:
  """A pure normalization of x [..., B, F] over F (layer) or over the batch axis B (batch).

  Safe inside `lax.scan`: it holds arrays, not module state. For BN, `stats` = (mean, var) with
  x's shape minus the batch axis normalizes with given (running) statistics; None normalizes with
  the masked batch statistics, which the call returns as (mean, var, count) for the update.
  """
  kind: str
  scale: Any = None
  bias: Any = None
  epsilon: float = norms.DEFAULT_EPSILON
  fast_variance: bool = False
  unbiased_variance: bool = False
  eval_stats: Any = None  # BN evaluation: running (mean, var), [T, F]

  def __call__(self, x, mask=None, stats=None):
    if self.kind == 'none':
      return x, None
    batch_axis = x.ndim - 2
    batch_stats = None
    if self.kind == 'layer':
      centered, _, var, _ = norms.centered_moments(
          x, (x.ndim - 1,), use_fast_variance=self.fast_variance)
    elif stats is None:
      centered, mean, var, count = norms.centered_moments(
          x, (batch_axis,), mask=None if mask is None else mask[..., None],
          use_fast_variance=self.fast_variance)
      if self.unbiased_variance:
        var = var * count / jnp.maximum(count - 1.0, 1.0)
      count = jnp.broadcast_to(count, mean.shape)[..., 0]
      batch_stats = tuple(jnp.squeeze(v, batch_axis) for v in (mean, var, count))
    else:
      mean, var = (jnp.expand_dims(v, batch_axis) for v in stats)
      centered = jnp.asarray(x, jnp.float32) - mean
    y = centered * lax.rsqrt(var + self.epsilon)
    if self.scale is not None:
      y = y * self.scale
    if self.bias is not None:
      y = y + self.bias
    return y, batch_stats


class RecurrentNorm(nn.Module):
  """Parameters (and BN running averages, one row per step up to T_max) of one normalization.

  `use_bias` False gives Cooijmans' shift 0. Call it to get the pure `StepNorm` for a sequence;
  `update` folds the batch statistics of the steps into the running averages after the scan.
  """
  spec: NormSpec
  features: int
  max_steps: int
  use_bias: bool = True

  def setup(self):
    kind, shape = self.spec.kind, (self.features,)
    if kind == 'none':
      return
    gamma = 1.0 if kind == 'layer' else self.spec.gamma_init
    self.scale = self.param('scale', nn.initializers.constant(gamma), shape, jnp.float32)
    self.bias = (self.param('bias', nn.initializers.zeros, shape, jnp.float32)
                 if self.use_bias else None)
    if kind == 'batch':
      rows = (self.max_steps, self.features)
      self.running_mean = self.variable('batch_stats', 'mean', jnp.zeros, rows, jnp.float32)
      self.running_var = self.variable('batch_stats', 'var', jnp.ones, rows, jnp.float32)

  def __call__(self, num_steps: int, train: bool) -> StepNorm:
    spec = self.spec
    if spec.kind == 'none':
      return StepNorm('none')
    eval_stats = None
    if spec.kind == 'batch' and not (train or spec.eval_batch_stats):
      # Steps past T_max reuse the statistics of T_max.
      rows = jnp.minimum(jnp.arange(num_steps), self.running_mean.value.shape[0] - 1)
      eval_stats = (self.running_mean.value[rows], self.running_var.value[rows])
    return StepNorm(spec.kind, self.scale, self.bias, spec.epsilon, spec.fast_variance,
                    spec.unbiased_variance, eval_stats)

  def update(self, batch_stats) -> None:
    """Momentum update of the running averages of steps < T_max that saw a real example."""
    if (batch_stats is None or self.is_initializing()
        or not self.is_mutable_collection('batch_stats')):
      return
    mean, var, count = batch_stats
    n = min(mean.shape[0], self.running_mean.value.shape[0])
    seen = count[:n, None] > 0
    m = self.spec.momentum
    for running, value in ((self.running_mean, mean), (self.running_var, var)):
      old = running.value[:n]
      new = jnp.where(seen, m * old + (1.0 - m) * value[:n], old)
      running.value = running.value.at[:n].set(new)


def block_orthogonal(num_blocks: int) -> Callable[..., Any]:
  """Initializer of an [H, num_blocks * H] kernel: one orthogonal H x H matrix per gate."""
  def init(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, num_blocks)
    block = nn.initializers.orthogonal()
    return jnp.concatenate([block(k, (rows, cols // num_blocks), dtype) for k in keys], -1)
  return init


def _scan(step, carry, xs, mask_TxB, unroll: int):
  """Runs `step(carry, x_t, mask_t) -> (carry, h_t, stats_t)` over time (axis 0 of `xs`).

  At padded steps (mask 0) the carry is left as it was and the output is 0, so padding changes
  neither the real steps nor the final state.
  """
  def body(carry, inputs):
    x_t, mask_t = inputs
    new_carry, h_t, stats_t = step(carry, x_t, mask_t)
    if mask_t is not None:
      real = mask_t[:, None] > 0
      new_carry = jax.tree.map(lambda new, old: jnp.where(real, new, old), new_carry, carry)
      h_t = jnp.where(real, h_t, 0.0)
    return new_carry, (h_t, stats_t)
  return lax.scan(body, carry, (xs, mask_TxB), unroll=unroll)


class RecurrentLayer(nn.Module):
  """One recurrent layer over a whole sequence: x [B, T, D] -> (outputs [B, T, H], final state).

  The final state is (h, c) for the LSTM and h for the GRU and RNN; with a mask [B, T] (1 for
  real steps) it is the state after each sequence's last real step. The initial h is 0 (the
  paper's) unless `initial_h` [B, H] is given; the LSTM's initial c is always 0.
  """
  cell: str = 'lstm'
  hidden_size: int = 128
  norm: NormSpec = NormSpec()
  forget_bias: float = 1.0
  dtype: Any = jnp.float32
  unroll: int = 1

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT=None, train: bool = False, initial_h=None):
    if self.cell not in CELLS:
      raise ValueError(f'unknown cell {self.cell!r}; choose one of {", ".join(CELLS)}')
    batch, num_steps, _ = x_BxTxD.shape
    hidden = self.hidden_size
    units = GATE_BLOCKS[self.cell] * hidden
    max_steps = self.norm.max_steps or num_steps
    kernel_x = self.param('kernel_x', nn.initializers.lecun_normal(),
                          (x_BxTxD.shape[-1], units), jnp.float32)
    kernel_h = self.param('kernel_h', block_orthogonal(GATE_BLOCKS[self.cell]),
                          (hidden, units), jnp.float32)
    cast = lambda v: jnp.asarray(v, self.dtype)
    # Time-major projection of every step at once; the scan only adds the recurrent part.
    ax_TxBxF = jnp.einsum('btd,df->tbf', cast(x_BxTxD), cast(kernel_x),
                          preferred_element_type=jnp.float32)
    mask_TxB = None if mask_BxT is None else jnp.asarray(mask_BxT, jnp.float32).T
    recurrent = lambda h: jnp.dot(cast(h), cast(kernel_h), preferred_element_type=jnp.float32)

    def make_norm(name, features, use_bias=True):
      return RecurrentNorm(self.norm, features, max_steps, use_bias, name=name)

    def bias(init_fn=nn.initializers.zeros):
      return self.param('bias', init_fn, (units,), jnp.float32)

    h0 = (jnp.zeros((batch, hidden)) if initial_h is None
          else jnp.broadcast_to(jnp.asarray(initial_h, jnp.float32), (batch, hidden)))
    kind = self.norm.kind
    shift = kind == 'layer'  # BN's shift is 0 on the summed inputs (Cooijmans et al.)
    if self.cell == 'lstm':
      x_norms = [make_norm('norm_x', units, shift)]
      step_norms = [make_norm('norm_h', units, shift), make_norm('norm_c', hidden)]
      x_slices = [slice(None)]
      forget = self.forget_bias
      b = bias(lambda key, shape, dtype: jnp.zeros(shape, dtype).at[:hidden].set(forget))
      step, carry = _lstm_step, (h0, jnp.zeros((batch, hidden)))
    elif self.cell == 'gru':
      x_norms = [make_norm('norm_x_gates', 2 * hidden, shift),
                 make_norm('norm_x_candidate', hidden, shift)]
      step_norms = [make_norm('norm_h_gates', 2 * hidden, shift),
                    make_norm('norm_h_candidate', hidden, shift)]
      x_slices = [slice(None, 2 * hidden), slice(2 * hidden, None)]
      b = None if shift else bias()  # with LN the normalizers' biases are the only ones (paper)
      step, carry = _gru_step, h0
    else:
      x_norms, x_slices = [], []  # Eq. 4 normalizes the sum W_h h + W_x x inside the step
      step_norms = [make_norm('norm', hidden)]
      b = bias() if kind == 'none' else None
      step, carry = _rnn_step, h0

    # The input half of each normalization does not depend on h: all steps at once.
    x_fns = [module(num_steps, train) for module in x_norms]
    x_parts = [fn(ax_TxBxF[..., part], mask_TxB, fn.eval_stats)
               for fn, part in zip(x_fns, x_slices)]
    ax = jnp.concatenate([y for y, _ in x_parts], -1) if x_parts else ax_TxBxF
    if b is not None:
      ax = ax + b
    step_fns = [module(num_steps, train) for module in step_norms]

    def step_fn(carry, inputs, mask_t):
      ax_t, eval_stats_t = inputs
      return step(carry, ax_t, recurrent, step_fns, eval_stats_t, mask_t)

    eval_stats = tuple(fn.eval_stats for fn in step_fns)
    final, (h_TxBxH, step_stats) = _scan(step_fn, carry, (ax, eval_stats), mask_TxB,
                                         self.unroll)
    batch_stats = [stats for _, stats in x_parts] + list(step_stats)
    for module, stats in zip(x_norms + step_norms, batch_stats):
      module.update(stats)
    return jnp.swapaxes(h_TxBxH, 0, 1), final


def _lstm_step(carry, ax_t, recurrent, step_norms, eval_stats, mask_t):
  norm_h, norm_c = step_norms
  h, c = carry
  ah, h_stats = norm_h(recurrent(h), mask_t, eval_stats[0])
  f, i, o, g = jnp.split(ax_t + ah, 4, axis=-1)
  c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
  c_normed, c_stats = norm_c(c, mask_t, eval_stats[1])
  h = nn.sigmoid(o) * jnp.tanh(c_normed)
  return (h, c), h, (h_stats, c_stats)


def _gru_step(h, ax_t, recurrent, step_norms, eval_stats, mask_t):
  norm_gates, norm_candidate = step_norms
  hidden = h.shape[-1]
  ah = recurrent(h)
  ah_gates, gate_stats = norm_gates(ah[:, :2 * hidden], mask_t, eval_stats[0])
  ah_candidate, candidate_stats = norm_candidate(ah[:, 2 * hidden:], mask_t, eval_stats[1])
  z, r = jnp.split(ax_t[:, :2 * hidden] + ah_gates, 2, axis=-1)
  candidate = jnp.tanh(ax_t[:, 2 * hidden:] + nn.sigmoid(r) * ah_candidate)
  z = nn.sigmoid(z)
  h = (1.0 - z) * h + z * candidate
  return h, h, (gate_stats, candidate_stats)


def _rnn_step(h, ax_t, recurrent, step_norms, eval_stats, mask_t):
  (norm,) = step_norms
  a, stats = norm(recurrent(h) + ax_t, mask_t, eval_stats[0])
  h = jnp.tanh(a)
  return h, h, (stats,)
