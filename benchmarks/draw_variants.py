"""Variants of ln_jax's DRAW step, timed against the library's: what would make it faster.

  python -m benchmarks.draw_variants --norm=layer_c --rounds=3 --steps=3
  python -m benchmarks.draw_variants --variants=library,fused_gates --overrides=reduced

Each variant is a copy of `ln_jax.models.draw` with one change, trained by the library's own
`step.train_step` (the task's loss, clipping and Adam) on one fixed batch:
- `library`: the model as it is.
- `fused_gates`: each LSTM does one matmul, [x, h] @ W with W [D + H, 4H], instead of
  x @ W_x + h @ W_h (the same parameters, stacked): half the matmul calls per glimpse forward
  and backward, and a longer inner dimension.
- `stacked_read`: the read attention filters x and x^ in one einsum over [B, 2, H, W].
- `unroll2`: the glimpse scan unrolled by 2 (XLA sees two glimpses per loop iteration).
- `stacked_filterbank`: F_X and F_Y of one attention computed as one array [B, 2, N, 28] (the
  image is square), so each filterbank op runs once instead of twice, forward and backward.
- `closed_form_ln`: fused_gates, and 'layer_c' normalizes c with `fused_norms.layer_norm` (a
  hand-written backward pass) instead of autodiff of LN.
- `all`: fused_gates + stacked_read + closed_form_ln + stacked_filterbank.
Variants run in one process in interleaved rounds (a rough comparison; the library's
contenders in scripts/bench.py each have their own process), reported as wall and CPU time per
step. On a shared machine, run XLA on one thread (XLA_FLAGS='--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1') and compare the CPU times: they move less with the load. The
parameter count is printed: every variant has the library's.
"""

from __future__ import annotations

import statistics
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from ln_jax import layers
from ln_jax import norms
from ln_jax import tasks
from ln_jax.layers import rnn_cells
from ln_jax.models import draw as draw_model
from ln_jax.models import draw_attention
from ln_jax.training import optimizers
from ln_jax.training import step as step_lib
from benchmarks import draw
from benchmarks import load_config
from benchmarks import layers as benchmark_layers

VARIANTS = {'library': {}, 'fused_gates': {'fused_gates': True},
            'stacked_read': {'stacked_read': True}, 'unroll2': {'unroll': 2},
            'stacked_filterbank': {'stacked_filterbank': True},
            'closed_form_ln': {'fused_gates': True, 'closed_form_ln': True},
            'all': {'fused_gates': True, 'stacked_read': True, 'closed_form_ln': True,
                    'stacked_filterbank': True}}


class FusedGatesLSTM(nn.Module):
  """The library's LSTM ('none' or 'layer_c') with one gate matmul over [x, h]."""
  features: int
  norm: str = 'none'
  forget_bias: float = 1.0
  closed_form_ln: bool = False

  @nn.compact
  def __call__(self, state, x):
    h, c = state
    units = 4 * self.features
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (x.shape[-1] + self.features, units))
    bias = self.param('bias', lambda key, shape: jnp.zeros(shape).at[:self.features].set(
        self.forget_bias), (units,))
    f, i, o, g = jnp.split(jnp.concatenate([x, h], -1) @ kernel + bias, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    c_out = c
    if self.norm == 'layer_c' and self.closed_form_ln:
      c_out = benchmark_layers.ClosedFormLayerNorm(name='norm_c')(c)
    elif self.norm == 'layer_c':
      c_out = layers.LayerNorm(name='norm_c')(c)
    h = nn.sigmoid(o) * jnp.tanh(c_out)
    return (h, c), h


def square_filterbanks(params_Bx5, size: int, n: int):
  """`draw_attention.filterbanks` on a size x size image, F_X and F_Y as one array."""
  params_Bx5 = jnp.asarray(params_Bx5, jnp.float32)
  gx_, gy_, log_variance, log_stride, log_gamma = (
      params_Bx5[:, k] for k in range(draw_attention.NUM_PARAMS))
  center_Bx2 = (size + 1) / 2.0 * (jnp.stack([gx_, gy_], -1) + 1.0)
  stride_B = (size - 1) / max(n - 1, 1) * jnp.exp(log_stride)
  offsets = jnp.arange(1, n + 1, dtype=jnp.float32) - n / 2.0 - 0.5
  mu_Bx2xN = center_Bx2[:, :, None] + offsets * stride_B[:, None, None]
  positions = jnp.arange(1, size + 1, dtype=jnp.float32)
  f = jnp.exp(-jnp.square(positions - mu_Bx2xN[..., None])
              / (2.0 * jnp.exp(log_variance)[:, None, None, None]))
  f = f / jnp.maximum(jnp.sum(f, axis=-1, keepdims=True), draw_attention.NORMALIZER_EPSILON)
  return f[:, 0], f[:, 1], jnp.exp(log_gamma)


class VariantStep(draw_model.DrawStep):
  """The library's glimpse with the changes its flags name (see the module docstring)."""
  fused_gates: bool = False
  stacked_read: bool = False
  closed_form_ln: bool = False
  stacked_filterbank: bool = False

  def _filterbanks(self, dense, h_dec_BxH, n: int):
    if self.stacked_filterbank:
      return square_filterbanks(dense(h_dec_BxH), self.width, n)
    return draw_attention.filterbanks(dense(h_dec_BxH), self.height, self.width, n)

  def write(self, h_dec_BxH):
    patch = jnp.asarray(self.write_patch(h_dec_BxH), jnp.float32)
    f_x, f_y, gamma = self._filterbanks(self.write_attention, h_dec_BxH, self.write_n)
    patch = patch.reshape(-1, self.write_n, self.write_n)
    return draw_attention.write(patch, f_x, f_y, gamma).reshape(patch.shape[0], -1)

  def setup(self):  # the library's, with the fused-gate LSTM as an option
    if self.fused_gates:
      lstm = lambda units: FusedGatesLSTM(units, self.norm.kind, self.forget_bias,
                                          self.closed_form_ln)
    else:
      lstm = lambda units: rnn_cells.LSTMCell(units, norm=self.norm, dtype=self.dtype,
                                              forget_bias=self.forget_bias)
    self.encoder = lstm(self.encoder_units)
    self.decoder = lstm(self.decoder_units)
    self.posterior = nn.Dense(2 * self.latent_size, dtype=self.dtype)
    self.read_attention = nn.Dense(draw_attention.NUM_PARAMS, dtype=self.dtype)
    self.write_attention = nn.Dense(draw_attention.NUM_PARAMS, dtype=self.dtype)
    self.write_patch = nn.Dense(self.write_n ** 2, dtype=self.dtype)

  def read(self, x_BxP, x_hat_BxP, h_dec_BxH):
    f_x, f_y, gamma = self._filterbanks(self.read_attention, h_dec_BxH, self.read_n)
    if not self.stacked_read:
      return draw_attention.read(self._images(x_BxP), self._images(x_hat_BxP), f_x, f_y, gamma)
    images = jnp.stack([x_BxP, x_hat_BxP], 1).reshape(-1, 2, self.height, self.width)
    patches = jnp.einsum('bih,bkhw,bjw->bkij', f_y, images, f_x)
    return gamma[:, None] * patches.reshape(patches.shape[0], -1)


class VariantDRAW(draw_model.DRAW):
  """The library's DRAW over `VariantStep`, its glimpse scan unrolled by `unroll`."""
  fused_gates: bool = False
  stacked_read: bool = False
  closed_form_ln: bool = False
  stacked_filterbank: bool = False
  unroll: int = 1

  def setup(self):
    self.step = VariantStep(self.encoder_units, self.decoder_units, self.latent_size,
                            self.read_n, self.write_n, self.height, self.width, self.attention,
                            self.norm, self.forget_bias, self.dtype,
                            fused_gates=self.fused_gates, stacked_read=self.stacked_read,
                            closed_form_ln=self.closed_form_ln,
                            stacked_filterbank=self.stacked_filterbank)

  def __call__(self, x_BxP, train: bool = False):
    del train
    x_BxP = jnp.asarray(x_BxP, jnp.float32)
    batch = x_BxP.shape[0]
    eps_TxBxZ = jax.random.normal(self.make_rng('latent'),
                                  (self.glimpses, batch, self.latent_size))
    carry = (jnp.zeros_like(x_BxP), self._zeros(batch, self.encoder_units),
             self._zeros(batch, self.decoder_units))
    scan = nn.scan(lambda step, carry, x, eps: step(carry, x, eps),
                   variable_broadcast='params', split_rngs={'params': False},
                   in_axes=(nn.broadcast, 0), out_axes=0, length=self.glimpses,
                   unroll=self.unroll)
    (canvas, _, _), kl_TxB = scan(self.step, carry, x_BxP, eps_TxBxZ)
    return {'logits': canvas, 'kl': kl_TxB.T}


def variant_model(config, **changes):
  """The library's DRAW for `config` without `changes`, else the copy with them."""
  if not changes:
    return tasks.load_task(config).create_model(config)
  m = config.model
  return VariantDRAW(
      glimpses=m.glimpses, encoder_units=m.encoder_units, decoder_units=m.decoder_units,
      latent_size=m.latent_size, read_n=m.read_n, write_n=m.write_n, height=m.image_height,
      width=m.image_width, attention=m.attention, norm=norms.recurrent_spec(config),
      forget_bias=m.forget_bias, **changes)


def compiled_step(config, model, images):
  """(one training step on a fixed batch, its parameter count), compiled and run once."""
  task = tasks.load_task(config)
  key = jax.random.PRNGKey(config.seed)
  state = step_lib.create_train_state(config, task, model, optimizers.make_optimizer(config),
                                      key, key, {'image': images[:1]})
  batch = {'image': jnp.asarray(images[:config.batch_size])}
  train_step = jax.jit(step_lib.train_step, donate_argnums=(0,))
  count = sum(p.size for p in jax.tree.leaves(state.params))
  box = [state]

  def run(num_steps: int) -> None:
    for _ in range(num_steps):
      box[0], metrics = train_step(box[0], batch)
    jax.block_until_ready(metrics)

  run(1)
  return run, count


_NORM = flags.DEFINE_enum('norm', 'none', list(draw.NORMS), "DRAW's LSTM cell.")
_OVERRIDES = flags.DEFINE_string('overrides', '', 'configs/draw_mnist.py variant, e.g. reduced.')
_CHOSEN = flags.DEFINE_list('variants', list(VARIANTS), 'Variants to time.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Interleaved rounds.', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 3, 'Steps per variant per round.', lower_bound=1)


def main(argv):
  del argv
  config = load_config(draw.CONFIG, ','.join(filter(None, (_OVERRIDES.value,
                                                           f'norm={_NORM.value}'))))
  images = draw.binary_images(config.batch_size)
  runs = {}
  for name in _CHOSEN.value:
    start = time.perf_counter()
    runs[name], count = compiled_step(config, variant_model(config, **VARIANTS[name]), images)
    print(f'{name}: {count} parameters, compiled in {time.perf_counter() - start:.1f} s',
          flush=True)
  # CPU time as well as wall time: on a shared machine the process's CPU seconds per step
  # move less with the load than its wall time (one XLA thread: they are the same work).
  times, cpu_times = {name: [] for name in runs}, {name: [] for name in runs}
  for _ in range(_ROUNDS.value):
    for name, run in runs.items():
      start, cpu_start = time.perf_counter(), time.process_time()
      run(_STEPS.value)
      times[name].append(1e3 * (time.perf_counter() - start) / _STEPS.value)
      cpu_times[name].append(1e3 * (time.process_time() - cpu_start) / _STEPS.value)
  for label, table in (('wall', times), ('CPU', cpu_times)):
    base = table.get('library')
    for name, ms in table.items():
      ratio = '' if base is None else ' library / this: %.2f (%.2f-%.2f)' % (
          statistics.median(b / m for b, m in zip(base, ms)),
          min(b / m for b, m in zip(base, ms)), max(b / m for b, m in zip(base, ms)))
      print(f'{name:>13}: {statistics.median(ms):8.1f} {label} ms/step{ratio}  rounds '
            + ' '.join(f'{m:.0f}' for m in ms))


if __name__ == '__main__':
  app.run(main)
