"""ln_jax's step-wise recurrent cells as Flax NNX modules, for `nnx.RNN` or a loop of your own.

  cell = ln_jax.nnx.LSTMCell(in_features, 128, norm='layer', rngs=nnx.Rngs(0))
  h_BxTxH = nnx.RNN(cell)(x_BxTxD, seq_lengths=lengths_B)

`LSTMCell`, `GRUCell` and `SimpleRNNCell` take flax.nnx's arguments (`in_features`,
`hidden_features`, keyword-only options, `rngs`) and follow `flax.nnx.RNNCellBase`
(`initialize_carry(input_shape, rngs)`, `__call__(carry, x) -> (carry, h)`,
`num_feature_axes`). They compute with the step code of the Linen cells (`ln_jax.layers.rnn_cells`,
the equations of `ln_jax.layers.cells`) and hold the same arrays under the same names: 'kernel_x'
[D, units], 'kernel_h' [H, units], 'bias' and one submodule per normalizer ('norm_x', 'norm_h',
'norm_c', ...) with its 'scale' and 'bias' (nnx.Param) and, for recurrent BN, 'mean' and 'var'
('std' for batch renorm) [T_max, F] and renorm's 'step' (nnx.BatchStat).

`norm` is a `NormSpec` or its kind: 'none', 'layer' (the paper's LN cells), 'layer_c' (LSTM only:
LN of the cell state), 'group', 'batch' (recurrent BN, Cooijmans et al.) or 'batch_renorm'. The
BN kinds normalize step t with statistics of their own, so their carry holds the step index,
(state, t [B] int32), and they keep running averages of steps 0..T_max-1 (`NormSpec.max_steps`,
required); later steps reuse the row of T_max - 1. Batch statistics (which update the running
averages in place, step by step, also inside nnx.RNN's scan) or running averages: from
`use_running_average` at the call, else the constructor's, which `model.train()` /
`model.eval()` / `nnx.view` set. nnx.RNN runs padded steps like real ones, so with
`seq_lengths` BN's batch statistics include the padding; a loop of your own can pass `mask` [B]
(1 = real) to leave it out.

Where they differ from flax.nnx's cells: the LSTM's carry is (h, c) (flax: (c, h)), its gates are
one fused [D, 4H] / [H, 4H] kernel pair in the order f, i, o, g with one bias (forget gate 1); the
GRU's gates are z, r, candidate; the initial state is 0 (no `carry_init`); the parameters are
float32 (`dtype` sets the matrix products' dtype, the statistics stay float32); no gate or
activation functions, `residual`, `promote_dtype` nor `*_metadata` arguments.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from ln_jax.layers import cells
from ln_jax.layers import recurrent_norms
from ln_jax.layers import rnn_cells
from ln_jax.nnx import common

NORM_KINDS = cells.RECURRENT_NORMS + cells.LSTM_ONLY_NORMS


class _Normalizer(nnx.Module):
  """One normalizer of a cell (`recurrent_norms.RecurrentNorm`'s variables): gain and shift and,
  for recurrent BN, running averages per step, read and folded one step at a time."""

  def __init__(self, spec: cells.NormSpec, features: int, use_bias: bool, centered_input: bool):
    self.spec, self.centered_input = spec, centered_input
    shape = (features,)
    self.scale = nnx.Param(jnp.full(shape, recurrent_norms.initial_gain(spec), jnp.float32))
    self.bias = nnx.Param(jnp.zeros(shape, jnp.float32)) if use_bias else None
    self.spread = recurrent_norms.RUNNING_SPREAD.get(spec.kind)
    if self.spread:
      rows = (spec.max_steps, features)
      self.mean = nnx.BatchStat(jnp.zeros(rows, jnp.float32))
      setattr(self, self.spread, nnx.BatchStat(jnp.ones(rows, jnp.float32)))
    if spec.kind == 'batch_renorm':
      self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def _running(self):
    """(running averages or None, batch renorm's counter or None)."""
    if not self.spread:
      return None, None
    counter = self.step[...] if self.spec.kind == 'batch_renorm' else None
    return (self.mean[...], getattr(self, self.spread)[...]), counter

  def at_step(self, t, train: bool):
    running, counter = self._running()
    return recurrent_norms.step_norm_at(
        self.spec, self.scale[...], None if self.bias is None else self.bias[...],
        self.centered_input, running, counter, t, train, folds=train)

  def fold(self, t, batch_stats) -> None:
    running, counter = self._running()
    (mean, spread), counter = recurrent_norms.fold_at(self.spec, running, counter, t,
                                                      batch_stats)
    self.mean[...] = mean
    getattr(self, self.spread)[...] = spread
    if counter is not None:
      self.step[...] = counter


class _RecurrentCell(nnx.RNNCellBase):
  """One step of the cell `_CELL` (see the module docstring). x is [..., in_features]."""

  _CELL = ''

  def __init__(self, in_features: int, hidden_features: int, *,
               norm: cells.NormSpec | str = cells.NormSpec(),
               use_running_average: bool | None = False, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    name, cell = type(self).__name__, self._CELL
    spec = cells.NormSpec(kind=norm) if isinstance(norm, str) else norm
    if spec.kind not in NORM_KINDS:
      raise ValueError(f'{name}: unknown norm {spec.kind!r}; choose one of '
                       f'{", ".join(NORM_KINDS)}')
    try:
      layout = cells.norm_layout(cell, spec.kind, hidden_features)
    except ValueError as e:  # 'layer_c' for a GRU or RNN
      raise ValueError(f'{name}: {e}') from None
    rnn_cells.check_max_steps(spec, f'{name}: ')
    self.in_features, self.hidden_features = in_features, hidden_features
    self.spec, self.dtype = spec, dtype
    self.use_running_average = use_running_average
    if use_running_average and not self.counts_steps:
      raise ValueError(_no_running_averages(name, spec.kind))
    inits = cells.parameter_inits(cell, spec.kind, in_features, hidden_features,
                                  self._forget_bias())
    self.kernel_x, self.kernel_h = (nnx.Param(init(rngs.params(), shape, jnp.float32))
                                    for init, shape in (inits['kernel_x'], inits['kernel_h']))
    self.bias = (nnx.Param(inits['bias'][0](rngs.params(), inits['bias'][1], jnp.float32))
                 if 'bias' in inits else None)
    self.norm_names = tuple(layout)
    for norm_name, settings in cells.norm_settings(spec, layout).items():
      if settings[0].kind != 'none':  # a plain term: no variables
        setattr(self, norm_name, _Normalizer(*settings))

  @property
  def num_feature_axes(self) -> int:
    return 1

  @property
  def counts_steps(self) -> bool:
    """Whether the carry holds the step index (recurrent BN)."""
    return self.spec.kind in rnn_cells.BATCH_NORMS

  def _forget_bias(self) -> float:
    return 0.0

  def set_view(self, use_running_average: bool | None = None):
    """For `nnx.view`: sets `use_running_average` where given."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None):
    """The zero state for inputs of `input_shape` (batch dimensions, then in_features) and, for
    recurrent BN, step 0. `rngs` is accepted for nnx.RNN and unused: the initial state is 0."""
    del rngs
    return rnn_cells.zero_carry(self._CELL, tuple(input_shape[:-1]), self.hidden_features,
                                self.counts_steps)

  def __call__(self, carry, x, *, mask=None, use_running_average: bool | None = None):
    name, cell = type(self).__name__, self._CELL
    if x.shape[-1] != self.in_features:
      raise ValueError(f'{name}: in_features={self.in_features}, but the input x of shape '
                       f'{x.shape} has {x.shape[-1]} features on its last axis')
    if mask is not None and jnp.shape(mask) != x.shape[:-1]:
      raise ValueError(f'{name}: mask of shape {jnp.shape(mask)} is not the batch shape '
                       f'{x.shape[:-1]} of the input')
    train = self._training(name, use_running_average)
    state, step_B, t = rnn_cells.split_carry(carry, self.counts_steps)
    kernels = cells.center_kernels(cell, self.spec.kind, self.hidden_features,
                                   self.kernel_x[...], self.kernel_h[...])
    kernels += (None if self.bias is None else self.bias[...],)
    normalizers = {n: getattr(self, n) for n in self.norm_names if hasattr(self, n)}
    step_norms = {n: (cells.StepNorm('none'), None) for n in self.norm_names}
    step_norms.update({n: module.at_step(t, train) for n, module in normalizers.items()})
    new_state, h, batch_stats = rnn_cells.cell_step(cell, state, x, kernels, step_norms, mask,
                                                    self.dtype)
    if train:
      for n, module in normalizers.items():
        if batch_stats[n] is not None:
          module.fold(t, batch_stats[n])
    return rnn_cells.join_carry(new_state, step_B), h

  def _training(self, name: str, from_call: bool | None) -> bool:
    """Whether BN normalizes with batch statistics (and updates its running averages)."""
    if not self.counts_steps:
      if from_call:
        raise ValueError(_no_running_averages(name, self.spec.kind))
      return False
    return not common.resolve_running_average(name, from_call, self.use_running_average)


def _no_running_averages(name: str, kind: str) -> str:
  return (f'{name}: use_running_average=True, but norm {kind!r} keeps no running averages '
          f'(only {" and ".join(repr(k) for k in rnn_cells.BATCH_NORMS)} do)')


class LSTMCell(_RecurrentCell):
  """LSTM: (f, i, o, g) = N(W_h h) + N(W_x x) + b, c = s(f) c + s(i) tanh(g),
  h = s(o) tanh(N(c)); 'layer_c' normalizes c only (the paper's DRAW cell). Carry (h, c).
  `forget_bias` is the forget gate's initial bias; the other options are the cells'."""

  _CELL = 'lstm'

  def __init__(self, in_features: int, hidden_features: int, *, forget_bias: float = 1.0,
               **options):
    self.forget_bias = forget_bias
    super().__init__(in_features, hidden_features, **options)

  def _forget_bias(self) -> float:
    return self.forget_bias


class GRUCell(_RecurrentCell):
  """GRU: (z, r) = N(W_h h) + N(W_x x), h~ = tanh(N(W x) + s(r) N(U h)),
  h = (1 - s(z)) h + s(z) h~ (biases as in the Linen cell). Carry h."""

  _CELL = 'gru'


class SimpleRNNCell(_RecurrentCell):
  """Vanilla RNN, paper Eq. 4: h = tanh(N(W_h h + W_x x) (+ b)). Carry h."""

  _CELL = 'rnn'
