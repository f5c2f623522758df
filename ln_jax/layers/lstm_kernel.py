"""The LSTM and LN-LSTM over a whole sequence with a hand-written backward pass (custom VJP).

Autodiff of `lax.scan` accumulates the recurrent kernel's gradient inside the backward loop: one
small [H, B] x [B, 4H] product and one [H, 4H] add per time step. Here the backward scan only
carries (dh, dc) and emits each step's gradient of the summed inputs; after it, the kernel's
gradient is ONE [H, T*B] x [T*B, 4H] product over all steps, and the gains' and biases'
gradients are sums over [T, B] of stored values. The forward scan stores the gate activations
(and LN's normalized values and reciprocal deviations), so the backward scan recomputes nothing
but a tanh.

The normalizations are those of `cells.StepNorm` for the LN-LSTM: the recurrent projection
W_h h is normalized without re-centring (its kernel is re-centred, so it has mean 0 already),
the cell state with its mean. The input projection's LN is not recurrent: the caller applies it
to all steps at once before the scan (`fused_norms.rms_norm`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import fused_norms

# Steps per iteration of the forward and backward loops; unrolling 4 was slower on a 2-core CPU
# at 28 steps of [64, 512] (CPU time 39 vs 31 ms per forward+backward under heavy load).
UNROLL = 1


def _split4(z):
  return jnp.split(z, 4, axis=-1)


def _forward_step(params, layer_norm: bool, epsilon: float, carry, nx_t):
  """One step; returns the new carry, h, and what the backward pass needs of this step."""
  h, c = carry
  ah = jnp.dot(h, params['kernel_h'], preferred_element_type=nx_t.dtype)
  residuals = {}
  if layer_norm:
    r_h = lax.rsqrt(jnp.mean(jnp.square(ah), -1, keepdims=True) + epsilon)
    ah_hat = ah * r_h
    residuals.update(ah_hat=ah_hat, r_h=r_h)
    ah = ah_hat * params['scale_h'] + params['shift_h']
  z = ah + nx_t + params['bias']
  f, i, o, g = _split4(z)
  sf, si, so, tg = jax.nn.sigmoid(f), jax.nn.sigmoid(i), jax.nn.sigmoid(o), jnp.tanh(g)
  c_new = sf * c + si * tg
  if layer_norm:
    centered = c_new - jnp.mean(c_new, -1, keepdims=True)
    r_c = lax.rsqrt(jnp.mean(jnp.square(centered), -1, keepdims=True) + epsilon)
    c_hat = centered * r_c
    residuals.update(c_hat=c_hat, r_c=r_c)
    tc = jnp.tanh(c_hat * params['scale_c'] + params['shift_c'])
  else:
    tc = jnp.tanh(c_new)
  h_new = so * tc
  residuals['gates'] = jnp.concatenate([sf, si, so, tg], -1)
  return (h_new, c_new), (h_new, c_new, residuals)


def _scan(params, layer_norm, epsilon, nx_TxBx4H, h0, c0):
  step = functools.partial(_forward_step, params, layer_norm, epsilon)
  return lax.scan(step, (h0, c0), nx_TxBx4H, unroll=UNROLL)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def lstm_sequence(layer_norm: bool, epsilon: float, params, nx_TxBx4H, h0, c0):
  """(h of every step [T, B, H], (h_T, c_T)) of an LSTM with summed inputs nx + N(W_h h) + b.

  `params`: 'kernel_h' [H, 4H] and 'bias' [4H]; with `layer_norm` also 'scale_h', 'shift_h'
  [4H] (the recurrent projection's LN) and 'scale_c', 'shift_c' [H] (the cell state's LN).
  Gate blocks in the order f, i, o, g. Float32.
  """
  final, (h_TxBxH, _, _) = _scan(params, layer_norm, epsilon, nx_TxBx4H, h0, c0)
  return h_TxBxH, final


def _lstm_fwd(layer_norm, epsilon, params, nx_TxBx4H, h0, c0):
  final, (h_TxBxH, c_TxBxH, residuals) = _scan(params, layer_norm, epsilon, nx_TxBx4H, h0, c0)
  return (h_TxBxH, final), (params, h0, c0, h_TxBxH, c_TxBxH, residuals)


def _layer_norm_input_grad(dy_hat, x_hat, r, centre: bool):
  """d/dx of x_hat = (x - mean) * r given d/dx_hat; without `centre`, of x_hat = x * r."""
  inner = x_hat * jnp.mean(dy_hat * x_hat, -1, keepdims=True)
  if centre:
    inner = inner + jnp.mean(dy_hat, -1, keepdims=True)
  return r * (dy_hat - inner)


def _lstm_bwd(layer_norm, epsilon, saved, cotangents):
  del epsilon  # the stored reciprocal deviations carry it
  params, h0, c0, h_TxBxH, c_TxBxH, residuals = saved
  dh_TxBxH, (dh_final, dc_final) = cotangents
  c_prev_TxBxH = jnp.concatenate([c0[None], c_TxBxH[:-1]], 0)
  kernel_t = params['kernel_h'].T

  def step(carry, inputs):
    dh_next, dc_next = carry
    dh_out, c_prev, c_t, res = inputs
    dh = dh_next + dh_out
    sf, si, so, tg = _split4(res['gates'])
    if layer_norm:
      tc = jnp.tanh(res['c_hat'] * params['scale_c'] + params['shift_c'])
    else:
      tc = jnp.tanh(c_t)
    d_tc_in = dh * so * (1.0 - jnp.square(tc))  # gradient of tanh's input
    if layer_norm:
      dc = dc_next + _layer_norm_input_grad(d_tc_in * params['scale_c'], res['c_hat'],
                                            res['r_c'], centre=True)
    else:
      dc = dc_next + d_tc_in
    dz = jnp.concatenate([dc * c_prev * sf * (1.0 - sf), dc * tg * si * (1.0 - si),
                          dh * tc * so * (1.0 - so), dc * si * (1.0 - jnp.square(tg))], -1)
    outputs = {'dz': dz}
    if layer_norm:
      dah = _layer_norm_input_grad(dz * params['scale_h'], res['ah_hat'], res['r_h'],
                                   centre=False)
      outputs.update(dah=dah, d_tc_in=d_tc_in)
    else:
      dah = dz
    dh_prev = jnp.dot(dah, kernel_t, preferred_element_type=dah.dtype)
    return (dh_prev, dc * sf), outputs

  (dh0, dc0), grads = lax.scan(step, (dh_final, dc_final),
                               (dh_TxBxH, c_prev_TxBxH, c_TxBxH, residuals),
                               reverse=True, unroll=UNROLL)
  dz = grads['dz']
  dah = grads.get('dah', dz)
  h_prev = jnp.concatenate([h0[None], h_TxBxH[:-1]], 0)
  hidden = h0.shape[-1]
  # The recurrent kernel's gradient: one product over every step at once.
  d_kernel = jnp.dot(jnp.reshape(h_prev, (-1, hidden)).T, jnp.reshape(dah, (-1, 4 * hidden)),
                     preferred_element_type=dah.dtype)
  sum_tb = lambda v: jnp.sum(v, (0, 1))
  d_params = {'kernel_h': d_kernel, 'bias': sum_tb(dz)}
  if layer_norm:
    d_params.update(scale_h=sum_tb(dz * residuals['ah_hat']), shift_h=sum_tb(dz),
                    scale_c=sum_tb(grads['d_tc_in'] * residuals['c_hat']),
                    shift_c=sum_tb(grads['d_tc_in']))
  d_params = {k: d_params[k].astype(v.dtype) for k, v in params.items()}
  return d_params, dz, dh0, dc0


lstm_sequence.defvjp(_lstm_fwd, _lstm_bwd)


# The normalizations for which `cells.RecurrentLayer` uses `lstm_layer`: none by default. It
# computes 'none' and 'layer' (tested against autodiff), but on the loaded 2-core machine where
# it was written its speed against autodiff of the scan could not be told from the noise
# (0.8x-1.1x); scripts/bench.py times both ('kernel:<norm>' rows) to decide on a quiet one.
FUSED_KINDS = ()


def applies(cell: str, fns: dict, mask_TxB, dtype) -> bool:
  """Whether `lstm_layer` computes a `cells.RecurrentLayer`: a float32 LSTM or LN-LSTM whose
  steps are all real (no padding mask), with two-pass statistics."""
  kinds = {fn.kind for fn in fns.values()}
  return (cell == 'lstm' and mask_TxB is None and jnp.dtype(dtype) == jnp.float32
          and kinds <= set(FUSED_KINDS) and not any(fn.fast_variance for fn in fns.values()))


def lstm_layer(fns: dict, ax_TxBx4H, kernel_h, bias, carry):
  """`cells._lstm_step` over every step, given the layer's `StepNorm`s and the input projection.

  The input projection's LN (over a re-centred kernel's output, so without centring) is not
  recurrent: it runs on all steps at once before the scan.
  """
  norm_x, norm_h, norm_c = fns['norm_x'], fns['norm_h'], fns['norm_c']
  params = {'kernel_h': kernel_h, 'bias': bias}
  layer_norm = norm_x.kind == 'layer'
  if layer_norm:
    ax_TxBx4H = fused_norms.rms_norm(ax_TxBx4H, norm_x.scale, norm_x.bias,
                                     epsilon=norm_x.epsilon)
    params.update(scale_h=norm_h.scale, shift_h=norm_h.bias, scale_c=norm_c.scale,
                  shift_c=norm_c.bias)
  return lstm_sequence(layer_norm, norm_h.epsilon, params, ax_TxBx4H, *carry)
