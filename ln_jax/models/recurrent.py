"""Stacked recurrent layers and the sequence classifier for sequential MNIST.

The classifier takes the training loop's flat images [B, 784] and reads them as a sequence of
784 / pixels_per_step steps (rows: 28 steps of 28 pixels; pixels: 784 steps of 1), so the same
data pipeline, train step and run directory serve the MLP and the recurrent models.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ln_jax.layers import cells
from ln_jax.layers import rnn_cells
from ln_jax import data as data_lib
from ln_jax import norms


def real_steps(num_steps: int, lengths_B=None):
  """Mask [B, T] of the steps before each sequence's length, or None (all steps real)."""
  if lengths_B is None:
    return None
  return jnp.arange(num_steps)[None, :] < jnp.asarray(lengths_B)[:, None]


class RecurrentStack(nn.Module):
  """`num_layers` recurrent layers, each reading the previous one's outputs.

  Returns (outputs of the last layer [B, T, H], final state of every layer). With `lengths` [B]
  the steps past each sequence's length are padding: they change neither the real steps nor the
  final states, and their outputs are 0. `initial_h` [B, H] (or [B, 1]) starts every layer's h.

  `step_wise`: each layer is flax's `nn.RNN` over the step-wise cell (`rnn_cells.LSTMCell`, ...)
  instead of `cells.RecurrentLayer`: the same equations a step at a time, as a model that steps
  its own cells runs them (W_x x inside each step, autodiff of the loop); for measuring that
  path. With `lengths` its padded steps' outputs are not zeroed (the final states are right).
  """
  cell: str = 'lstm'
  hidden_size: int = 128
  num_layers: int = 1
  norm: cells.NormSpec = cells.NormSpec()
  forget_bias: float = 1.0
  dtype: Any = jnp.float32
  step_wise: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, lengths_B=None, train: bool = False, initial_h=None):
    mask_BxT = real_steps(x_BxTxD.shape[1], lengths_B)
    h_BxTxH, finals = x_BxTxD, []
    for i in range(self.num_layers):
      if self.step_wise:
        h_BxTxH, final = self._step_wise_layer(f'layer_{i}', h_BxTxH, lengths_B, train,
                                               initial_h)
      else:
        h_BxTxH, final = cells.RecurrentLayer(
            self.cell, self.hidden_size, self.norm, self.forget_bias, self.dtype,
            name=f'layer_{i}')(h_BxTxH, mask_BxT, train, initial_h)
      finals.append(final)
    return h_BxTxH, tuple(finals)

  def _step_wise_layer(self, name, x_BxTxD, lengths_B, train, initial_h):
    batch, num_steps, _ = x_BxTxD.shape
    spec = self.norm
    if spec.kind in rnn_cells.BATCH_NORMS and not spec.max_steps:
      spec = dataclasses.replace(spec, max_steps=num_steps)
    options = dict(features=self.hidden_size, norm=spec, dtype=self.dtype, train=train)
    if self.cell == 'lstm':
      options['forget_bias'] = self.forget_bias
    cell = _STEP_CELLS[self.cell](**options, parent=None)  # nn.RNN adopts it as its "cell"
    carry = cell.initialize_carry(None, x_BxTxD[:, 0].shape)
    if initial_h is not None:
      state, step_B = rnn_cells.split_carry(carry, cell.counts_steps)[:2]
      h0 = jnp.broadcast_to(jnp.asarray(initial_h, jnp.float32), (batch, self.hidden_size))
      state = (h0, state[1]) if self.cell == 'lstm' else h0
      carry = rnn_cells.join_carry(state, None) if step_B is None else (state, step_B)
    rnn = nn.RNN(cell, return_carry=True, name=name,
                 **rnn_cells.rnn_options(train and not self.is_initializing()))
    final, h_BxTxH = rnn(x_BxTxD, initial_carry=carry, seq_lengths=lengths_B)
    return h_BxTxH, rnn_cells.split_carry(final, cell.counts_steps)[0]


_STEP_CELLS = {'lstm': rnn_cells.LSTMCell, 'gru': rnn_cells.GRUCell,
               'rnn': rnn_cells.SimpleRNNCell}
INITIAL_STATES = ('zeros', 'input_mean')


class SequenceClassifier(nn.Module):
  """Flat inputs [B, T * pixels_per_step] -> recurrent stack -> Dense on the last h -> logits.

  `initial_state`: 'zeros' (the papers') or 'input_mean', which starts every unit of h at the
  example's mean input, as Cooijmans et al.'s code offers (`default_initial_state` picks it for
  BN). Recurrent BN needs states that differ over the batch: where every sequence starts with
  the same inputs (the blank top of MNIST digits), zero states stay identical over the batch,
  each BN divides by sqrt(epsilon) and the gradient grows ~300x per step until it overflows.
  """
  stack: RecurrentStack = RecurrentStack()
  pixels_per_step: int = 28
  num_classes: int = 10
  initial_state: str = 'zeros'

  @nn.compact
  def __call__(self, x_BxP, train: bool = False, lengths_B=None):
    # Pixels in [0, 1] become [-1, 1]: a blank row is then a non-zero input. Zero inputs with
    # the zero initial state keep LN's summed inputs exactly 0, where its gradient is
    # gain / sqrt(epsilon) per normalization and overflows float32 within a few blank rows.
    x_BxP = 2.0 * jnp.asarray(x_BxP, jnp.float32) - 1.0
    x_BxTxD = jnp.reshape(x_BxP, (x_BxP.shape[0], -1, self.pixels_per_step))
    initial_h = None
    if self.initial_state == 'input_mean':
      mask_BxT = real_steps(x_BxTxD.shape[1], lengths_B)
      weights = 1.0 if mask_BxT is None else mask_BxT[..., None].astype(jnp.float32)
      total = jnp.sum(x_BxTxD * weights, axis=(1, 2))
      count = jnp.sum(jnp.broadcast_to(weights, x_BxTxD.shape), axis=(1, 2))
      initial_h = (total / jnp.maximum(count, 1.0))[:, None]
    elif self.initial_state != 'zeros':
      raise ValueError(f'unknown initial_state {self.initial_state!r}; choose one of '
                       f'{", ".join(INITIAL_STATES)}')
    _, finals = self.stack(x_BxTxD, lengths_B, train, initial_h)
    last = finals[-1]
    h_BxH = last[0] if isinstance(last, tuple) else last  # the LSTM's state is (h, c)
    logits = nn.Dense(self.num_classes, dtype=self.stack.dtype, name='logits')(h_BxH)
    return jnp.asarray(logits, jnp.float32)


def default_initial_state(norm: str) -> str:
  """'input_mean' for recurrent BN and batch renorm, which need states that differ over the
  batch; else 0."""
  return 'input_mean' if norms.batch_dependent(norm) else 'zeros'


def create_classifier(config) -> SequenceClassifier:
  """The recurrent model of a `configs/seq_mnist.py` config."""
  m = config.model
  stack = RecurrentStack(cell=m.cell, hidden_size=m.hidden_size, num_layers=m.num_layers,
                         norm=norms.recurrent_spec(config), forget_bias=m.forget_bias,
                         dtype=jnp.dtype(config.dtype), step_wise=m.step_wise)
  return SequenceClassifier(stack=stack, pixels_per_step=m.pixels_per_step,
                            num_classes=m.num_classes,
                            initial_state=m.initial_state or default_initial_state(config.norm))


def config_checks(config) -> list[tuple[bool, str]]:
  """(condition, one-line message) pairs for the recurrent model's config values."""
  m = config.model
  supported = ', '.join(norms.RECURRENT_NORMS)
  return [
      (m.cell in cells.CELLS,
       f'unknown model.cell {m.cell!r}; choose one of {", ".join(cells.CELLS)}'),
      (config.norm in norms.RECURRENT_NORMS,
       f'norm={config.norm!r} has no recurrent version; choose one of {supported}'),
      (m.initial_state is None or m.initial_state in INITIAL_STATES,
       f'unknown model.initial_state {m.initial_state!r}; choose one of '
       f'{", ".join(INITIAL_STATES)}'),
      (m.hidden_size > 0, f'model.hidden_size={m.hidden_size} must be positive'),
      (m.num_layers > 0, f'model.num_layers={m.num_layers} must be positive'),
      (0 < m.pixels_per_step <= data_lib.NUM_PIXELS
       and data_lib.NUM_PIXELS % m.pixels_per_step == 0,
       f'model.pixels_per_step={m.pixels_per_step} must divide the {data_lib.NUM_PIXELS} '
       'pixels of an image (28 for rows, 1 for pixels)'),
  ]
