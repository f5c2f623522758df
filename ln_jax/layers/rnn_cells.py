"""The recurrent cells of `cells.RecurrentLayer` one step at a time, as flax.linen RNN cells.

  rnn = nn.RNN(ln_jax.LSTMCell(128, norm=ln_jax.NormSpec('layer')))
  outputs = rnn.apply(variables, x_BxTxD, seq_lengths=lengths_B)

`LSTMCell`, `GRUCell` and `SimpleRNNCell` follow `flax.linen.RNNCellBase`
(`__call__(carry, x) -> (carry, h)`, `initialize_carry`, `num_feature_axes`), so they also run
in `nn.Bidirectional` and in hand-written step loops. They compute what `RecurrentLayer`
computes, with the same parameter names and shapes ('kernel_x', 'kernel_h', 'bias', 'norm_x',
...; the kinds of `NormSpec`, plus 'layer_c' for the LSTM: LN of the cell state only), from the
same code: for the same parameters `nn.RNN` over a cell gives the layer's outputs and gradients.

Carry: the state, (h, c) for the LSTM (the layer's final-state order, not flax's (c, h)) and h
for the GRU and RNN. Recurrent BN ('batch', 'batch_renorm') normalizes step t with statistics of
its own, so its cells carry the step too: (state, t [B] int32). They keep the running averages
of steps 0..T_max-1 (`NormSpec.max_steps`, required: a cell never sees the sequence length) in
'batch_stats' with `RecurrentNorm`'s names and shapes; later steps use the row of T_max - 1.
`train` (a field, since nn.RNN calls a cell with (carry, x) only) selects batch statistics and
updates the running averages when 'batch_stats' is mutable. nn.scan cannot create a carried
collection nor write a broadcast one, so a BN cell's nn.RNN takes `rnn_options(train)`:

  init = nn.RNN(ln_jax.LSTMCell(128, norm=spec), **ln_jax.rnn_options(train=False))
  variables = init.init(key, x)                                  # (and evaluation)
  rnn = nn.RNN(ln_jax.LSTMCell(128, norm=spec, train=True), **ln_jax.rnn_options(train=True))
  outputs, updates = rnn.apply(variables, x, mutable=['batch_stats'])

nn.RNN runs padded steps like real ones, so with `seq_lengths` BN's batch statistics include the
padding; a hand-written loop can pass `mask` [B] (1 = real) to leave it out, as the layer does.

The step itself is pure (`split_carry`, `cell_step`, `join_carry`, `zero_carry`, and
`recurrent_norms.step_norm_at` / `fold_at` for BN's per-step rows): the NNX cells
(`ln_jax.nnx.cells`) run the same functions on variables of their own.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax.linen.recurrent import RNNCellBase
import jax
import jax.numpy as jnp

from ln_jax.layers import cells
from ln_jax.layers import recurrent_norms

BATCH_NORMS = tuple(recurrent_norms.RUNNING_SPREAD)  # per time step: the cell carries the step


def rnn_options(train: bool) -> dict:
  """nn.RNN's (or nn.scan's) collection arguments for a BN cell: 'batch_stats' read-only
  (broadcast to every step: initialization and evaluation) or carried from step to step
  (training, applied with mutable=['batch_stats']). Other cells need none (nor harm from them)."""
  if train:
    return {'variable_broadcast': 'params', 'variable_carry': 'batch_stats'}
  return {'variable_broadcast': ['params', 'batch_stats'], 'variable_carry': False}


class _CellNorm(cells.RecurrentNorm):
  """`RecurrentNorm` used one step at a time: the (traced) step index t picks the row
  min(t, T_max - 1) of the running averages, and a training step folds into row t < T_max."""

  def _updates(self) -> bool:
    """Whether batch statistics fold into the running averages (as `RecurrentNorm.update`)."""
    return not self.is_initializing() and self.is_mutable_collection('batch_stats')

  def _running(self):
    """(running averages or None, batch renorm's counter or None)."""
    if self.spec.kind not in recurrent_norms.RUNNING_SPREAD:
      return None, None
    counter = self.step.value if self.spec.kind == 'batch_renorm' else None
    return (self.running_mean.value, self.running_var.value), counter

  def at_step(self, t, train: bool):
    """(the pure `StepNorm` of step t, the running statistics it normalizes with or None)."""
    if self.spec.kind == 'none':
      return cells.StepNorm('none'), None
    running, counter = self._running()
    return recurrent_norms.step_norm_at(self.spec, self.scale, self.bias, self.centered_input,
                                        running, counter, t, train, train and self._updates())

  def update_at(self, t, batch_stats) -> None:
    """`recurrent_norms.fold_at` of step t into this module's running averages."""
    if batch_stats is None or not self._updates():
      return
    running, counter = self._running()
    (self.running_mean.value, self.running_var.value), counter = recurrent_norms.fold_at(
        self.spec, running, counter, t, batch_stats)
    if counter is not None:
      self.step.value = counter


def check_max_steps(spec: cells.NormSpec, prefix: str = '') -> None:
  """Raises a ValueError unless a recurrent BN spec gives T_max (`max_steps`)."""
  if spec.kind in BATCH_NORMS and not spec.max_steps:
    raise ValueError(f'{prefix}a {spec.kind!r} cell needs NormSpec.max_steps (T_max): it keeps '
                     'running averages per step and never sees the sequence length')


def zero_carry(cell: str, batch_dims: tuple[int, ...], hidden: int, counts_steps: bool):
  """The initial carry: state 0 (the paper's), and step 0 for the cells that count steps."""
  h = jnp.zeros(tuple(batch_dims) + (hidden,), jnp.float32)
  state = (h, h) if cell == 'lstm' else h
  return (state, jnp.zeros(batch_dims, jnp.int32)) if counts_steps else state


def split_carry(carry, counts_steps: bool):
  """(state, step index per example or None, the batch's step t: the row of BN's statistics)."""
  state, step_B = carry if counts_steps else (carry, None)
  # One step index for the batch (nn.RNN's are all equal).
  t = jnp.zeros((), jnp.int32) if step_B is None else jnp.max(step_B)
  return state, step_B, t


def join_carry(state, step_B):
  """The next carry: the new state (and the step index advanced)."""
  return state if step_B is None else (state, step_B + 1)


def cell_step(cell: str, state, x, kernels, step_norms: dict, mask=None, dtype=jnp.float32):
  """One step of `cell` (the layer's own equations, `cells._STEPS`): (new state, h, {name: the
  normalizer's batch statistics or None}).

  `kernels` = (kernel_x, kernel_h, bias or None) as the cell uses them; `step_norms` = {name:
  (StepNorm, running statistics or None)}. Examples that `mask` [B] marks 0 keep their state and
  output 0. Leading batch dimensions beyond one are flattened for the normalizers.
  """
  kernel_x, kernel_h, bias = kernels
  batch_dims = x.shape[:-1]
  flat = lambda a, size: jnp.reshape(a, (-1, size))
  hidden = kernel_h.shape[0]
  x = flat(x, x.shape[-1])
  state = jax.tree.map(lambda s: flat(s, hidden), state)
  mask = None if mask is None else jnp.reshape(jnp.asarray(mask), (-1,))
  batch_stats = {}

  def norm(name, a):
    fn, stats = step_norms[name]
    y, batch_stats[name] = fn(a, mask, stats)
    return y

  cast = lambda v: jnp.asarray(v, dtype)
  ax = jnp.dot(cast(x), cast(kernel_x), preferred_element_type=jnp.float32)
  h_prev = state[0] if cell == 'lstm' else state
  ah = jnp.dot(cast(h_prev), cast(kernel_h), preferred_element_type=jnp.float32)
  new_state, h = cells._STEPS[cell](state, ax, ah, norm, bias)  # pylint: disable=protected-access
  if mask is not None:
    real = mask[:, None] > 0
    new_state = jax.tree.map(lambda new, old: jnp.where(real, new, old), new_state, state)
    h = jnp.where(real, h, 0.0)
  unflat = lambda a: jnp.reshape(a, batch_dims + (hidden,))
  return jax.tree.map(unflat, new_state), unflat(h), batch_stats


class _RecurrentCell(RNNCellBase):
  """One step of `cells.RecurrentLayer`'s cell `_CELL` (see the module docstring).

  `features` is the hidden size H; x is [B, D]. `mask` [B] (hand-written loops only) marks the
  real examples: BN's statistics leave the others out, whose state stays as it was and whose
  output is 0 (the layer's padding). `train` overrides the field of the same name.
  """
  features: int
  norm: cells.NormSpec = cells.NormSpec()
  dtype: Any = jnp.float32
  train: bool = False

  _CELL = ''

  @property
  def num_feature_axes(self) -> int:
    return 1

  @property
  def counts_steps(self) -> bool:
    """Whether the carry holds the step index (recurrent BN)."""
    return self.norm.kind in BATCH_NORMS

  def _forget_bias(self) -> float:
    return 0.0

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """The zero state for inputs of `input_shape` (batch dimensions, then D); step 0."""
    del rng  # the initial state is 0, as in the paper
    return zero_carry(self._CELL, tuple(input_shape[:-1]), self.features, self.counts_steps)

  @nn.compact
  def __call__(self, carry, x, mask=None, train: bool | None = None):
    train = self.train if train is None else train
    cell, kind, hidden = self._CELL, self.norm.kind, self.features
    check_max_steps(self.norm)
    state, step_B, t = split_carry(carry, self.counts_steps)
    kernels = cells.cell_parameters(self, cell, kind, x.shape[-1], hidden, self._forget_bias())
    norms = cells.make_norms(self.norm, cells.norm_layout(cell, kind, hidden),
                             self.norm.max_steps or 1, _CellNorm)
    step_norms = {name: module.at_step(t, train) for name, module in norms.items()}
    new_state, h, batch_stats = cell_step(cell, state, x, kernels, step_norms, mask, self.dtype)
    for name, module in norms.items():
      module.update_at(t, batch_stats[name])
    return join_carry(new_state, step_B), h


class LSTMCell(_RecurrentCell):
  """LSTM: (f, i, o, g) = N(W_h h) + N(W_x x) + b, c = s(f) c + s(i) tanh(g),
  h = s(o) tanh(N(c)); 'layer_c' normalizes c only (the paper's DRAW cell). Carry (h, c)."""
  forget_bias: float = 1.0

  _CELL = 'lstm'

  def _forget_bias(self) -> float:
    return self.forget_bias


class GRUCell(_RecurrentCell):
  """GRU: (z, r) = N(W_h h) + N(W_x x), h~ = tanh(N(W x) + s(r) N(U h)),
  h = (1 - s(z)) h + s(z) h~ (biases as in `RecurrentLayer`). Carry h."""
  _CELL = 'gru'


class SimpleRNNCell(_RecurrentCell):
  """Vanilla RNN, paper Eq. 4: h = tanh(N(W_h h + W_x x) (+ b)). Carry h."""
  _CELL = 'rnn'
