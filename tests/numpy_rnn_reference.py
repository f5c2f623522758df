"""Step-by-step NumPy (float64) versions of the paper's recurrent equations, for the tests.

Written from the equations, not from ln_jax: one Python loop over time, and variable lengths
handled by running only the sequences still alive at each step (no masks, no padding). The
parameters are ln_jax's dict for one layer (kernels [inputs, units], gate blocks in the order
f, i, o, g for the LSTM; z, r, candidate for the GRU).
"""

from __future__ import annotations

import numpy as np


def sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def layer_norm(a, gain, bias, eps):
  """Paper Eq. 3 per row: statistics over the row's units, biased variance."""
  mu = a.mean(axis=1, keepdims=True)
  var = ((a - mu) ** 2).mean(axis=1, keepdims=True)
  return gain * (a - mu) / np.sqrt(var + eps) + bias


def batch_norm(a, gamma, beta, eps, mean=None, var=None):
  """BN over the rows (the batch); with mean/var given, those are used instead."""
  if mean is None:
    mean = a.mean(axis=0)
    var = ((a - mean) ** 2).mean(axis=0)
  return gamma * (a - mean) / np.sqrt(var + eps) + beta


class Normalizer:
  """Applies the named normalization of one layer and records BN's batch statistics per step."""

  def __init__(self, kind, params, eps, running=None, max_steps=None):
    self.kind, self.params, self.eps = kind, params, eps
    self.running, self.max_steps = running, max_steps  # running: name -> (mean [T], var [T])
    self.batch_stats = {}  # name -> list over steps of (mean, var)

  def __call__(self, name, a, t):
    if self.kind == 'none':
      return a
    p = self.params[name]
    gain = np.asarray(p['scale'], np.float64)
    bias = np.asarray(p['bias'], np.float64) if 'bias' in p else 0.0
    if self.kind == 'layer':
      return layer_norm(a, gain, bias, self.eps)
    if self.running is not None:
      mean, var = self.running[name]
      row = min(t, self.max_steps - 1)  # steps past T_max reuse the statistics of T_max
      return batch_norm(a, gain, bias, self.eps, mean[row], var[row])
    mean, var = a.mean(axis=0), a.var(axis=0)
    self.batch_stats.setdefault(name, []).append((mean, var))
    return batch_norm(a, gain, bias, self.eps)


def run(cell, normalizer, params, x, lengths=None):
  """Runs one layer over x [B, T, D]; returns (outputs [B, T, H] (0 past each length), h, c)."""
  x = np.asarray(x, np.float64)
  batch, steps, _ = x.shape
  lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
  w_x = np.asarray(params['kernel_x'], np.float64)
  w_h = np.asarray(params['kernel_h'], np.float64)
  b = np.asarray(params['bias'], np.float64) if 'bias' in params else 0.0
  hidden = w_h.shape[0]
  h, c = np.zeros((batch, hidden)), np.zeros((batch, hidden))
  outputs = np.zeros((batch, steps, hidden))
  norm = normalizer
  for t in range(steps):
    alive = np.flatnonzero(lengths > t)
    x_t, h_prev, c_prev = x[alive, t], h[alive], c[alive]
    if cell == 'lstm':
      pre = norm('norm_h', h_prev @ w_h, t) + norm('norm_x', x_t @ w_x, t) + b
      f, i, o, g = (pre[:, k * hidden:(k + 1) * hidden] for k in range(4))
      c_new = sigmoid(f) * c_prev + sigmoid(i) * np.tanh(g)
      h_new = sigmoid(o) * np.tanh(norm('norm_c', c_new, t))
    elif cell == 'gru':
      gates_h, cand_h = (h_prev @ w_h)[:, :2 * hidden], (h_prev @ w_h)[:, 2 * hidden:]
      gates_x, cand_x = (x_t @ w_x)[:, :2 * hidden], (x_t @ w_x)[:, 2 * hidden:]
      b_gates = b[:2 * hidden] if np.ndim(b) else 0.0
      b_cand = b[2 * hidden:] if np.ndim(b) else 0.0
      gates = norm('norm_h_gates', gates_h, t) + norm('norm_x_gates', gates_x, t) + b_gates
      z, r = sigmoid(gates[:, :hidden]), sigmoid(gates[:, hidden:])
      candidate = np.tanh(norm('norm_x_candidate', cand_x, t) + b_cand
                          + r * norm('norm_h_candidate', cand_h, t))
      h_new, c_new = (1.0 - z) * h_prev + z * candidate, c_prev
    else:  # Eq. 4: the sum of both summed inputs is normalized
      h_new = np.tanh(norm('norm', h_prev @ w_h + x_t @ w_x, t) + b)
      c_new = c_prev
    h[alive], c[alive], outputs[alive, t] = h_new, c_new, h_new
  return outputs, h, c


def cell_state_layer_norm(params, eps):
  """The normalizer of the DRAW LSTM (paper supplement): LN of the cell state c only, the
  summed inputs of the gates un-normalized. Called as `Normalizer` is, by `run`."""
  def norm(name, a, t):
    del t
    if name != 'norm_c':
      return a
    p = params[name]
    return layer_norm(a, np.asarray(p['scale'], np.float64), np.asarray(p['bias'], np.float64),
                      eps)
  return norm
