"""Peers written without ln_jax's training code: a hand-fused Flax loop and PyTorch's fused LSTM.

- `FlaxScanRunner`: what a JAX user would write by hand for the paper's MLP: `flax.linen`
  Dense/LayerNorm layers, `optax.adam`, the data on the device and `lax.scan` over
  `steps_per_call` steps per jitted call with the state donated.
- `TorchLSTMRunner`: the sequential-MNIST classifier with `torch.nn.LSTM` (oneDNN's fused
  kernels on the CPU), the same size, input scaling, Adam and gradient clipping as
  configs/seq_mnist.py.
Both take (config, images, labels) and have `warmup(n)` and `run(n) -> steps`, like the runners
of `training`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import training


class _FlaxMLP(nn.Module):
  hidden_sizes: tuple[int, ...]
  num_classes: int
  norm: str

  @nn.compact
  def __call__(self, x):
    for width in self.hidden_sizes:
      x = nn.Dense(width, use_bias=self.norm == 'none')(x)
      if self.norm == 'layer':
        x = nn.LayerNorm(epsilon=1e-5)(x)
      x = nn.relu(x)
    return nn.Dense(self.num_classes)(x)


class FlaxScanRunner:
  """The paper's MLP in plain Flax + optax, `steps_per_call` steps per jitted `lax.scan` call."""

  name = 'flax_scan'
  NORMS = ('layer', 'none')

  def __init__(self, config, images, labels):
    model = _FlaxMLP(tuple(config.model.hidden_sizes), config.model.num_classes, config.norm)
    key = jax.random.PRNGKey(config.seed)
    params = model.init(key, jnp.zeros((1, images.shape[1]), jnp.float32))
    optimizer = optax.adam(config.learning_rate)
    self._state = (params, optimizer.init(params))
    self._images, self._labels = jax.device_put(images), jax.device_put(labels)
    self._batch_size, self._chunk = config.batch_size, config.steps_per_call
    self._steps_per_epoch = len(labels) // config.batch_size
    self._key, self._position = key, 0
    self._order = None

    def loss_fn(params, x, y):
      logits = model.apply(params, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @functools.partial(jax.jit, donate_argnums=(0,), static_argnums=(3,))
    def steps(state, order, start, num_steps):
      def one(state, i):
        params, opt_state = state
        idx = jax.lax.dynamic_slice_in_dim(order, (start + i) * self._batch_size,
                                           self._batch_size)
        x = self._images[idx].astype(jnp.float32) / 255.0
        loss, grads = jax.value_and_grad(loss_fn)(params, x, self._labels[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss
      state, losses = jax.lax.scan(one, state, jnp.arange(num_steps))
      return state, losses.sum()

    self._steps = steps

  def run(self, num_steps: int) -> int:
    done = 0
    while done < num_steps:
      if self._position == 0:
        self._key, key = jax.random.split(self._key)
        self._order = jax.random.permutation(key, len(self._labels))
      n = min(self._chunk, self._steps_per_epoch - self._position)
      self._state, loss = self._steps(self._state, self._order, self._position, n)
      self._position = (self._position + n) % self._steps_per_epoch
      done += n
    jax.block_until_ready(loss)
    return done

  def warmup(self, num_steps: int) -> None:
    """Compiles both call sizes a long run uses: full chunks and the epoch's remainder."""
    self.run(max(num_steps, self._chunk))
    tail = self._steps_per_epoch % self._chunk
    if tail:
      scratch = jax.tree.map(jnp.copy, self._state)
      jax.block_until_ready(self._steps(scratch, self._order, 0, tail))


class TorchLSTMRunner:
  """`torch.nn.LSTM` (`torch.nn.GRU` for model.cell=gru) + a linear readout on the last h,
  Adam and global-norm clipping."""

  name = 'torch_lstm'

  def __init__(self, config, images, labels):
    import torch  # optional: the `bench` extra

    self._torch = torch
    torch.manual_seed(config.seed)
    m = config.model
    self._pixels = m.pixels_per_step
    layer = {'lstm': torch.nn.LSTM, 'gru': torch.nn.GRU}[m.cell]
    self._lstm = layer(m.pixels_per_step, m.hidden_size, batch_first=True)
    self._readout = torch.nn.Linear(m.hidden_size, m.num_classes)
    self._parameters = list(self._lstm.parameters()) + list(self._readout.parameters())
    self._optimizer = torch.optim.Adam(self._parameters, lr=config.learning_rate)
    self._clip = config.grad_clip_norm
    self._images = torch.from_numpy(np.asarray(images))
    self._labels = torch.from_numpy(np.asarray(labels, np.int64))
    self._batch_size = config.batch_size
    self._batches = training.TorchBatches(torch, len(labels), config.batch_size, config.seed)

  def run(self, num_steps: int) -> int:
    torch = self._torch
    for _ in range(num_steps):
      idx = self._batches.next()
      x = self._images[idx].float().div_(255.0).mul_(2.0).sub_(1.0)
      out, _ = self._lstm(x.reshape(self._batch_size, -1, self._pixels))
      loss = torch.nn.functional.cross_entropy(self._readout(out[:, -1]), self._labels[idx])
      self._optimizer.zero_grad(set_to_none=True)
      loss.backward()
      if self._clip:
        torch.nn.utils.clip_grad_norm_(self._parameters, self._clip)
      self._optimizer.step()
    return num_steps

  def warmup(self, num_steps: int) -> None:
    self.run(num_steps)
