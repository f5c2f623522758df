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
- 'layer_c' (LSTM only): LN of the cell state only, the DRAW cell of the paper's supplement:
  (f, i, o, g) = W_h h + W_x x + b, h = sigmoid(o) * tanh(LN(c)), gain 1 and bias 0 at init.
- 'group': Group Normalization (Wu & He, 2018) where the cell has LN, over `NormSpec.groups`
  groups of each normalized vector (one group is the 'layer' cell).
- 'batch_renorm': Batch Renormalization (Ioffe, 2017; see `batch_renorm`) where the cell has
  BN, per time step like recurrent BN: running mean and standard deviation [T_max, F] and a step
  counter for the r_max/d_max warm-up.

Speed: W_x x is computed for every step at once before the scan, which does one fused matmul
per step. Float32 LSTMs without padding (plain, LN, and BN with batch statistics) run
`lstm_kernel`, a hand-written backward pass over the whole sequence; the other cells and cases
use autodiff of the scan. With LN the kernels are re-centred per normalized group of units
first (LN's output is invariant to that, paper Table 1), so each LN of a projection needs its
variance only. Statistics are float32. Kernels are stored as [inputs, units] with the gate
blocks side by side in the order above.

The normalizers (`NormSpec`, `StepNorm`, `RecurrentNorm`) are in `recurrent_norms` and importable
from here. A cell's parameters, normalizer layout and step equations below are shared by the
layer and the step-wise cells (`rnn_cells`, and `ln_jax.nnx.cells` in Flax NNX).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ln_jax.kernels import lstm_kernel
from ln_jax.kernels import projection
# Also importable from here, where they were defined before: cells.NormSpec, cells.StepNorm, ...
from ln_jax.layers.recurrent_norms import NormSpec
from ln_jax.layers.recurrent_norms import PER_EXAMPLE_NORMS
from ln_jax.layers.recurrent_norms import RecurrentNorm
from ln_jax.layers.recurrent_norms import StepNorm  # pylint: disable=unused-import

CELLS = ('lstm', 'gru', 'rnn')
RECURRENT_NORMS = ('none', 'layer', 'batch', 'group', 'batch_renorm')
LSTM_ONLY_NORMS = ('layer_c',)  # LN of the cell state only (the paper's DRAW LSTM)
# Units of the fused projection per hidden unit, in gate blocks: f i o g | z r candidate | a.
GATE_BLOCKS = {'lstm': 4, 'gru': 3, 'rnn': 1}


def center_column_groups(kernel, sizes):
  """`kernel` [inputs, units] with each group of `sizes` columns re-centred to mean 0 per row.

  LN's output is unchanged by adding one vector to the weights of every unit it normalizes (the
  paper's weight-matrix re-centring invariance). With centred weights every projection already
  has mean 0 over the group, so LN skips one reduction per step, and its gradient is unchanged.
  """
  groups = jnp.split(kernel, np.cumsum(sizes)[:-1], axis=-1)
  return jnp.concatenate([g - jnp.mean(g, axis=-1, keepdims=True) for g in groups], -1)


def block_orthogonal(num_blocks: int) -> Callable[..., Any]:
  """Initializer of an [H, num_blocks * H] kernel: one orthogonal H x H matrix per gate."""
  def init(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, num_blocks)
    block = nn.initializers.orthogonal()
    return jnp.concatenate([block(k, (rows, cols // num_blocks), dtype) for k in keys], -1)
  return init


def _scan(step, carry, xs, mask_TxB):
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
  return lax.scan(body, carry, (xs, mask_TxB))


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

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT=None, train: bool = False, initial_h=None):
    if self.cell not in CELLS:
      raise ValueError(f'unknown cell {self.cell!r}; choose one of {", ".join(CELLS)}')
    batch, num_steps, _ = x_BxTxD.shape
    hidden, kind = self.hidden_size, self.norm.kind
    units = GATE_BLOCKS[self.cell] * hidden
    kernel_x, kernel_h, bias = cell_parameters(self, self.cell, kind, x_BxTxD.shape[-1], hidden,
                                               self.forget_bias)
    max_steps = self.norm.max_steps or num_steps
    modules = make_norms(self.norm, norm_layout(self.cell, kind, hidden), max_steps)
    fns = {name: module(num_steps, train) for name, module in modules.items()}

    cast = lambda v: jnp.asarray(v, self.dtype)
    # The input projection of every step at once, time-major (transposing the small input, not
    # the wide output). In the scan below its normalization is done step by step; the LSTM
    # kernel (`lstm_kernel`) normalizes all steps at once instead (measured faster there).
    x_TxBxD = cast(jnp.swapaxes(x_BxTxD, 0, 1))
    ax_TxBxF = jnp.reshape(projection.input_projection(
        jnp.reshape(x_TxBxD, (-1, x_TxBxD.shape[-1])), cast(kernel_x)),
        (num_steps, batch, units))
    mask_TxB = None if mask_BxT is None else jnp.asarray(mask_BxT, jnp.float32).T
    recurrent = lambda h: jnp.dot(cast(h), cast(kernel_h), preferred_element_type=jnp.float32)
    cell_step = _STEPS[self.cell]

    def step(carry, inputs, mask_t):
      ax_t, eval_stats_t = inputs
      batch_stats_t = {}

      def norm(name, a):
        y, batch_stats_t[name] = fns[name](a, mask_t, eval_stats_t[name])
        return y
      carry, h = cell_step(carry, ax_t, recurrent(carry[0] if self.cell == 'lstm' else carry),
                           norm, bias)
      return carry, h, batch_stats_t

    h0 = (jnp.zeros((batch, hidden)) if initial_h is None
          else jnp.broadcast_to(jnp.asarray(initial_h, jnp.float32), (batch, hidden)))
    carry = (h0, jnp.zeros((batch, hidden))) if self.cell == 'lstm' else h0
    # The kernel normalizes either every summed input or none: not 'layer_c'.
    if (kind not in LSTM_ONLY_NORMS
        and lstm_kernel.applies(self.cell, fns, mask_TxB, self.dtype)):  # hand-written backward
      h_TxBxH, final, batch_stats = lstm_kernel.lstm_layer(fns, ax_TxBxF, kernel_h, bias, carry)
      for name, stats in batch_stats.items():
        modules[name].update(jax.lax.stop_gradient(stats))
      return jnp.swapaxes(h_TxBxH, 0, 1), final
    eval_stats = {name: fn.eval_stats for name, fn in fns.items()}
    final, (h_TxBxH, batch_stats) = _scan(step, carry, (ax_TxBxF, eval_stats), mask_TxB)
    for name, module in modules.items():
      module.update(batch_stats[name])
    return jnp.swapaxes(h_TxBxH, 0, 1), final


def norm_layout(cell: str, kind: str, hidden: int) -> dict[str, tuple[str, int, bool, bool]]:
  """The normalizers of a cell: name -> (kind, features, has a shift, normalizes a projection).

  BN's shift is 0 on the summed inputs (Cooijmans et al.), where the cell's bias follows.
  """
  if kind in LSTM_ONLY_NORMS and cell != 'lstm':
    raise ValueError(f'norm {kind!r} is for the LSTM only, not the {cell}')
  units = GATE_BLOCKS[cell] * hidden
  if kind == 'layer_c':  # plain gates, LN of c before its tanh
    return {'norm_x': ('none', units, False, True), 'norm_h': ('none', units, False, True),
            'norm_c': ('layer', hidden, True, False)}
  shift = kind in PER_EXAMPLE_NORMS
  layout = {
      'lstm': {'norm_x': (units, shift, True), 'norm_h': (units, shift, True),
               'norm_c': (hidden, True, False)},
      'gru': {'norm_x_gates': (2 * hidden, shift, True),
              'norm_x_candidate': (hidden, shift, True),
              'norm_h_gates': (2 * hidden, shift, True),
              'norm_h_candidate': (hidden, shift, True)},
      'rnn': {'norm': (hidden, True, True)},  # Eq. 4: LN of W_h h + W_x x
  }[cell]
  return {name: (kind, *entry) for name, entry in layout.items()}


def norm_settings(spec: NormSpec, layout) -> dict[str, tuple[NormSpec, int, bool, bool]]:
  """Each entry of `norm_layout` as (its NormSpec, features, has a shift, centred input): LN of
  a projection gets inputs of mean 0 over its units (see `center_kernels`)."""
  return {name: (dataclasses.replace(spec, kind=kind), features, use_bias,
                 kind == 'layer' and projection)
          for name, (kind, features, use_bias, projection) in layout.items()}


def make_norms(spec: NormSpec, layout, max_steps: int, module_class=None) -> dict:
  """One `RecurrentNorm` (or `module_class`) per entry of `norm_layout`, named after it; call
  from the compact method of the module that owns them."""
  module_class = module_class or RecurrentNorm
  return {name: module_class(kind_spec, features, max_steps, use_bias, centered_input=centered,
                             name=name)
          for name, (kind_spec, features, use_bias, centered)
          in norm_settings(spec, layout).items()}


def parameter_inits(cell: str, kind: str, num_inputs: int, hidden: int,
                    forget_bias: float) -> dict[str, tuple[Callable[..., Any], tuple[int, ...]]]:
  """A cell's parameters in creation order: name -> (initializer, shape); 'kernel_x' [D, units],
  'kernel_h' [H, units] and, where the cell has one, 'bias' [units]."""
  units = GATE_BLOCKS[cell] * hidden
  inits = {'kernel_x': (nn.initializers.lecun_normal(), (num_inputs, units)),
           'kernel_h': (block_orthogonal(GATE_BLOCKS[cell]), (hidden, units))}
  # The LSTM's b is in every variant (the paper's LN-LSTM included). The GRU's and RNN's
  # normalizers carry their biases, except BN's shift-0 ones in the GRU.
  if {'lstm': True, 'gru': kind not in PER_EXAMPLE_NORMS, 'rnn': kind == 'none'}[cell]:
    forget = forget_bias if cell == 'lstm' else 0.0  # gate order f, i, o, g
    inits['bias'] = (lambda key, shape, dtype: jnp.zeros(shape, dtype).at[:hidden].set(forget),
                     (units,))
  return inits


def center_kernels(cell: str, kind: str, hidden: int, kernel_x, kernel_h):
  """The kernels as the cell uses them: with LN re-centred per normalized group of units
  (`center_column_groups`), else as stored."""
  if kind != 'layer':
    return kernel_x, kernel_h
  groups = {'lstm': (4 * hidden,), 'gru': (2 * hidden, hidden), 'rnn': (hidden,)}[cell]
  return tuple(center_column_groups(k, groups) for k in (kernel_x, kernel_h))


def cell_parameters(module: nn.Module, cell: str, kind: str, num_inputs: int, hidden: int,
                    forget_bias: float):
  """(kernel_x [D, units], kernel_h [H, units], bias [units] or None) of a cell, created in
  `module` (from its compact method); with LN the kernels come re-centred per normalized group."""
  values = {name: module.param(name, init, shape, jnp.float32) for name, (init, shape)
            in parameter_inits(cell, kind, num_inputs, hidden, forget_bias).items()}
  kernel_x, kernel_h = center_kernels(cell, kind, hidden, values['kernel_x'], values['kernel_h'])
  return kernel_x, kernel_h, values.get('bias')


def _add(a, b):
  return a if b is None else a + b


def _lstm_step(carry, ax_t, ah_t, norm, bias):
  """(f, i, o, g) = N(W_h h) + N(W_x x) + b; c = s(f) c + s(i) tanh(g); h = s(o) tanh(N(c))."""
  _, c = carry
  f, i, o, g = jnp.split(_add(norm('norm_h', ah_t) + norm('norm_x', ax_t), bias), 4, axis=-1)
  c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
  h = nn.sigmoid(o) * jnp.tanh(norm('norm_c', c))
  return (h, c), h


def _gru_step(h, ax_t, ah_t, norm, bias):
  """(z, r) = N(W_h h) + N(W_x x) (+ b); h~ = tanh(N(W x) (+ b) + s(r) N(U h));
  h = (1 - s(z)) h + s(z) h~."""
  split = 2 * h.shape[-1]
  gates = norm('norm_h_gates', ah_t[:, :split]) + norm('norm_x_gates', ax_t[:, :split])
  candidate = norm('norm_x_candidate', ax_t[:, split:])
  if bias is not None:
    gates, candidate = gates + bias[:split], candidate + bias[split:]
  z, r = jnp.split(gates, 2, axis=-1)
  candidate = jnp.tanh(candidate + nn.sigmoid(r) * norm('norm_h_candidate', ah_t[:, split:]))
  z = nn.sigmoid(z)
  h = (1.0 - z) * h + z * candidate
  return h, h


def _rnn_step(h, ax_t, ah_t, norm, bias):
  """Paper Eq. 4: h = tanh(N(W_h h + W_x x) (+ b))."""
  del h
  h = jnp.tanh(_add(norm('norm', ah_t + ax_t), bias))
  return h, h


_STEPS = {'lstm': _lstm_step, 'gru': _gru_step, 'rnn': _rnn_step}
