"""The LSTM, LN-LSTM and BN-LSTM over a sequence with a hand-written backward pass (custom VJP).

Autodiff of `lax.scan` accumulates the recurrent kernel's gradient inside the backward loop: one
small [H, B] x [B, 4H] product and one [H, 4H] add per time step. Here the backward scan only
carries (dh, dc) and emits each step's gradient of the summed inputs; after it, the kernel's
gradient is ONE [H, T*B] x [T*B, 4H] product over all steps, and the gains' and biases'
gradients are sums over [T, B] of stored values. The forward scan stores the gate activations
(and the normalized values and reciprocal deviations), so the backward scan recomputes nothing.

Memory layout matters on the CPU: XLA's loop fusions are several times slower when they read
a column block at a non-zero offset of a per-step slice of a stacked array (a [64, 128] gate
of step t of a [T, 64, 512] array took 50 us where a whole [T, 64, 128] array's slice took 9).
So every stacked array either loop reads is one gate or one full-width [B, 4H] value used
whole: the input projection is split into four per-gate arrays before the forward scan, the
activations are stored per gate, and the column blocks are taken only of values computed in
the step (the recurrent product).

The normalizations are those of `cells.StepNorm`. The input projection's is not recurrent: it
runs on all steps at once before the loop (LN by `fused_norms.rms_norm`, BN here), which was
faster than inside it (LN-LSTM 1.42x vs 1.50x the plain LSTM, BN-LSTM 1.65x vs 2.09x, T = 28).
In the loop: LN of W_h h without re-centring (its kernel is re-centred, so it has mean 0
already) and of the cell state with its mean; BN over the batch with the step's statistics,
which are returned for the running averages.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ln_jax.kernels import fused_norms
from ln_jax.layers import statistics

GATES = 4  # f, i, o, g
UNROLL = 1  # time steps per iteration of the forward and backward loops


@dataclasses.dataclass(frozen=True)
class Norm:
  """The normalization of the cell: 'none', 'layer' (the paper's LN-LSTM) or 'batch'
  (recurrent BN in training: batch statistics at every step, Cooijmans et al.'s shift 0 on
  the projections); `unbiased` scales BN's variance by n / (n - 1)."""
  kind: str = 'none'
  epsilon: float = statistics.DEFAULT_EPSILON
  unbiased: bool = False


def _blocks(z):
  """The four gate blocks of [..., 4H] (of a value computed in the step, not a stored one)."""
  return jnp.split(z, GATES, axis=-1)


def _batch_normalized(x, axis: int, unbiased: bool, epsilon: float):
  """(x_hat, 1 / sqrt(var + eps), mean, var) over `axis` with cells.StepNorm's statistics."""
  centered, mean, var, count = statistics.centered_moments(x, (axis,))
  if unbiased:
    var = var * count / jnp.maximum(count - 1.0, 1.0)
  r = lax.rsqrt(var + epsilon)
  return centered * r, r, mean, var


def _normalize(x, norm: Norm, centre_layer: bool):
  """(x_hat, r, BN's (mean, var) or None) of one step's [B, F]: LN over F (centring only with
  `centre_layer`), BN over the batch."""
  if norm.kind == 'batch':
    x_hat, r, mean, var = _batch_normalized(x, 0, norm.unbiased, norm.epsilon)
    return x_hat, r, (mean[0], var[0])
  if centre_layer:
    x = x - jnp.mean(x, -1, keepdims=True)
  r = lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + norm.epsilon)
  return x * r, r, None


def _forward_step(params, norm: Norm, carry, nx_t):
  """One step on the normalized input projection's gate blocks `nx_t`; returns the new carry
  and (h, the backward pass's values, BN's statistics)."""
  h, c = carry
  ah = jnp.dot(h, params['kernel_h'], preferred_element_type=h.dtype)
  saved, stats = {'c_prev': c}, {}
  if norm.kind != 'none':
    ah_hat, r_h, stats['norm_h'] = _normalize(ah, norm, False)
    saved.update(ah_hat=ah_hat, r_h=r_h)
    ah = ah_hat * params['scale_h'] + params.get('shift_h', 0.0)
  pre = [n + a + b for n, a, b in zip(nx_t, _blocks(ah), _blocks(params['bias']))]
  sf, si, so = (jax.nn.sigmoid(p) for p in pre[:3])
  tg = jnp.tanh(pre[3])
  c_new = sf * c + si * tg
  if norm.kind == 'none':
    tc = jnp.tanh(c_new)
  else:
    c_hat, r_c, stats['norm_c'] = _normalize(c_new, norm, True)
    saved.update(c_hat=c_hat, r_c=r_c)
    tc = jnp.tanh(c_hat * params['scale_c'] + params['shift_c'])
  h_new = so * tc
  saved.update(sf=sf, si=si, so=so, tg=tg, tc=tc)
  return (h_new, c_new), (h_new, saved, {k: v for k, v in stats.items() if v is not None})


def _normalized_inputs(params, norm: Norm, ax_TxBx4H):
  """BN of the input projection over the batch at every step, all steps at once (it is not
  recurrent): (normalized inputs, the backward pass's values, statistics). LN's is the
  caller's (`fused_norms.rms_norm`), also over all steps at once."""
  if norm.kind != 'batch':
    return ax_TxBx4H, {}, {}
  ax_hat, r, mean, var = _batch_normalized(ax_TxBx4H, 1, norm.unbiased, norm.epsilon)
  return (ax_hat * params['scale_x'], {'ax_hat': ax_hat, 'r_x': r},
          {'norm_x': (mean[:, 0], var[:, 0])})


def _forward(params, norm: Norm, ax_TxBx4H, h0, c0):
  nx, saved_x, stats_x = _normalized_inputs(params, norm, ax_TxBx4H)
  # The per-gate inputs are split off before the loop (see the module docstring).
  step = functools.partial(_forward_step, params, norm)
  final, (h_TxBxH, saved, stats) = lax.scan(step, (h0, c0), tuple(_blocks(nx)),
                                            unroll=UNROLL)
  stats = {name: (mean, var, jnp.full(mean.shape[:1], h0.shape[0], mean.dtype))
           for name, (mean, var) in {**stats_x, **stats}.items()}
  return h_TxBxH, final, stats, (saved_x, saved)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lstm_sequence(norm: Norm, params, ax_TxBx4H, h0, c0):
  """(h of every step [T, B, H], (h_T, c_T), BN's statistics) of an LSTM whose summed inputs
  are N_x(ax) + N_h(W_h h) + b, h = o * tanh(N_c(c)).

  `params`: 'kernel_h' [H, 4H] and 'bias' [4H]; for LN also 'scale_h', 'shift_h' [4H] (the
  recurrent projection's LN; the input projection's is the caller's) and 'scale_c', 'shift_c'
  [H]; for BN 'scale_x', 'scale_h' [4H] (shift 0) and 'scale_c', 'shift_c'. BN's statistics:
  {'norm_x' | 'norm_h' | 'norm_c': (mean [T, F], var [T, F], count [T])} of the batch at each
  step, for the running averages ({} without BN). Gate blocks in the order f, i, o, g. Float32.
  """
  return _forward(params, norm, ax_TxBx4H, h0, c0)[:3]


def _lstm_fwd(norm, params, ax_TxBx4H, h0, c0):
  params, ax_TxBx4H, h0, c0 = jax.tree.map(_value, (params, ax_TxBx4H, h0, c0))
  h_TxBxH, final, stats, saved = _forward(params, norm, ax_TxBx4H, h0, c0)
  return (h_TxBxH, final, stats), (params, h0, h_TxBxH, saved)


def _normalization_input_grad(dy_hat, x_hat, r, axis: int, centre: bool, var_factor=1.0):
  """d/dx of x_hat = (x - mean) * r, r = 1 / sqrt(var_factor * var + eps), statistics over
  `axis`, given d/dx_hat; without `centre`, of x_hat = x * r (mean 0 by construction)."""
  inner = var_factor * x_hat * jnp.mean(dy_hat * x_hat, axis, keepdims=True)
  if centre:
    inner = inner + jnp.mean(dy_hat, axis, keepdims=True)
  return r * (dy_hat - inner)


def _var_factor(norm: Norm, count: int) -> float:
  return count / max(count - 1, 1) if norm.kind == 'batch' and norm.unbiased else 1.0


def _backward_step(params, norm: Norm, kernel_t, carry, inputs):
  dh_next, dc_next = carry
  dh_out, s = inputs
  dh = dh_next if dh_out is None else dh_next + dh_out
  sf, si, so, tg, tc = s['sf'], s['si'], s['so'], s['tg'], s['tc']
  d_tc_in = dh * so * (1.0 - jnp.square(tc))  # gradient of tanh's input
  batch = norm.kind == 'batch'
  axis, factor = (0, _var_factor(norm, dh.shape[0])) if batch else (-1, 1.0)
  dc = dc_next + d_tc_in
  if norm.kind != 'none':
    dc = dc_next + _normalization_input_grad(d_tc_in * params['scale_c'], s['c_hat'], s['r_c'],
                                             axis, True, factor)
  dz = jnp.concatenate([dc * s['c_prev'] * sf * (1.0 - sf), dc * tg * si * (1.0 - si),
                        dh * tc * so * (1.0 - so), dc * si * (1.0 - jnp.square(tg))], -1)
  outputs = {'dz': dz}
  dah = dz
  if norm.kind != 'none':
    # LN's recurrent projection has mean 0 over the units (re-centred kernel): no centring.
    dah = _normalization_input_grad(dz * params['scale_h'], s['ah_hat'], s['r_h'], axis, batch,
                                    factor)
    outputs.update(dah=dah, d_tc_in=d_tc_in)
  dh_prev = jnp.dot(dah, kernel_t, preferred_element_type=dah.dtype)
  return (dh_prev, dc * sf), outputs


def _value(x):
  return x if x is None else getattr(x, 'value', x)


def _lstm_bwd(norm, saved, cotangents):
  params, h0, h_TxBxH, (saved_x, per_step) = saved
  dh_TxBxH, (dh_final, dc_final), _ = cotangents  # the statistics carry no gradient
  zero = lambda ct: jnp.zeros_like(h0) if isinstance(ct, SymbolicZero) else ct
  dh_final, dc_final = zero(dh_final), zero(dc_final)
  if isinstance(dh_TxBxH, SymbolicZero):  # the outputs of the steps are not used
    dh_TxBxH = None
  step = functools.partial(_backward_step, params, norm, params['kernel_h'].T)
  (dh0, dc0), grads = lax.scan(step, (dh_final, dc_final), (dh_TxBxH, per_step), reverse=True,
                                unroll=UNROLL)
  dz = grads['dz']
  dah = grads.get('dah', dz)
  h_prev = jnp.concatenate([h0[None], h_TxBxH[:-1]], 0)
  hidden = h0.shape[-1]
  # The recurrent kernel's gradient: one product over every step at once.
  d_kernel = jnp.dot(jnp.reshape(h_prev, (-1, hidden)).T,
                     jnp.reshape(dah, (-1, GATES * hidden)), preferred_element_type=dah.dtype)
  sum_tb = lambda v: jnp.sum(v, (0, 1))
  d_params = {'kernel_h': d_kernel, 'bias': sum_tb(dz)}
  if norm.kind != 'none':
    d_params.update(scale_h=sum_tb(dz * per_step['ah_hat']),
                    scale_c=sum_tb(grads['d_tc_in'] * per_step['c_hat']),
                    shift_c=sum_tb(grads['d_tc_in']))
  if norm.kind == 'layer':
    d_params['shift_h'] = d_params['bias']
  d_ax = dz
  if norm.kind == 'batch':
    d_params['scale_x'] = sum_tb(dz * saved_x['ax_hat'])
    d_ax = _normalization_input_grad(dz * params['scale_x'], saved_x['ax_hat'], saved_x['r_x'],
                                     1, True, _var_factor(norm, h0.shape[0]))
  d_params = {k: d_params[k].astype(v.dtype) for k, v in params.items()}
  return d_params, d_ax, dh0, dc0


lstm_sequence.defvjp(_lstm_fwd, _lstm_bwd, symbolic_zeros=True)


# The normalizations for which `cells.RecurrentLayer` uses `lstm_layer` (see docs/speed.md for
# the measurements behind the choice).
FUSED_KINDS = ('none', 'layer', 'batch')


def applies(cell: str, fns: dict, mask_TxB, dtype) -> bool:
  """Whether `lstm_layer` computes a `cells.RecurrentLayer`: a float32 LSTM, LN-LSTM or BN-LSTM
  normalizing with batch statistics, whose steps are all real (no padding mask), with
  two-pass statistics."""
  kinds = {fn.kind for fn in fns.values()}
  return (cell == 'lstm' and mask_TxB is None and jnp.dtype(dtype) == jnp.float32
          and kinds <= set(FUSED_KINDS)
          and not any(fn.fast_variance or fn.eval_stats is not None for fn in fns.values()))


def lstm_layer(fns: dict, ax_TxBx4H, kernel_h, bias, carry):
  """`cells._lstm_step` over every step, given the layer's `StepNorm`s and the input projection:
  (h of every step [T, B, H], final (h, c), {norm name: BN's statistics of every step})."""
  norm_x, norm_h, norm_c = fns['norm_x'], fns['norm_h'], fns['norm_c']
  norm = Norm(norm_h.kind, norm_h.epsilon, norm_h.unbiased_variance)
  params = {'kernel_h': kernel_h, 'bias': bias}
  if norm.kind == 'layer':  # over a re-centred kernel's output: no centring
    ax_TxBx4H = fused_norms.rms_norm(ax_TxBx4H, norm_x.scale, norm_x.bias,
                                     epsilon=norm_x.epsilon)
    params.update(shift_h=norm_h.bias)
  elif norm.kind == 'batch':
    params['scale_x'] = norm_x.scale
  if norm.kind != 'none':
    params.update(scale_h=norm_h.scale, scale_c=norm_c.scale, shift_c=norm_c.bias)
  return lstm_sequence(norm, params, ax_TxBx4H, *carry)

