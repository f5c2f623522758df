"""DRAW (Gregor et al. 2015) with selective attention, as the LN paper trains it (Section 6.4).

One glimpse t = 1..T, from the canvas c_0 = 0 and zero LSTM states:

  x^_t    = x - sigmoid(c_{t-1})                       (the error image)
  r_t     = read(x, x^_t, h_dec_{t-1})                 ([B, 2 read_n^2]; [x, x^] without attention)
  h_enc_t = LSTM_enc([r_t, h_dec_{t-1}])
  mu, log sigma = split(W_q h_enc_t + b_q)             (Q(z_t | x) = N(mu, sigma^2))
  z_t     = mu + sigma * eps_t,   eps_t ~ N(0, I)       (from the rng stream 'latent')
  h_dec_t = LSTM_dec(z_t)
  c_t     = c_{t-1} + write(h_dec_t)                   (an N_w x N_w patch placed by attention)

The canvas c_T is the image's Bernoulli logits; KL_t = KL(N(mu, sigma^2) || N(0, I)) in closed
form, 0.5 * sum(mu^2 + sigma^2 - 2 log sigma - 1). `DRAW(x_BxP)` returns {'logits': [B, P],
'kl': [B, T]} (P = height * width, x flat in row-major order, values in [0, 1]; `noise_TxBxZ`
optionally fixes the eps_t); `DRAW.generate(num_samples)` draws z_t from the prior and returns
sigmoid(c_t) after every step, [num_samples, T, P]. The glimpses run in `nn.scan` (one compiled
step whatever T is).

Both LSTMs are `ln_jax.layers.rnn_cells.LSTMCell` (gate order f, i, o, g; forget-gate bias 1):
'none' the plain cell, 'layer_c' the LN paper's DRAW cell (LN of c only), 'layer' the full
LN-LSTM, 'group' group norm where 'layer' has LN. Attention is `draw_attention`.

Parameters (`variables['params']`, kernels [inputs, outputs], H_e / H_d the LSTM units, Z the
latent size, D_r = 2 read_n^2 (2 P without attention)), all under 'step' (shared by the steps):
  encoder/kernel_x [D_r + H_d, 4 H_e]  rows: r first, then h_dec
  encoder/kernel_h [H_e, 4 H_e], encoder/bias [4 H_e]
  decoder/kernel_x [Z, 4 H_d], decoder/kernel_h [H_d, 4 H_d], decoder/bias [4 H_d]
  encoder|decoder/norm_{x,h,c}/{scale,bias} as the norm has them ('layer_c': norm_c [H] only;
      'layer': norm_x, norm_h [4H] and norm_c [H]; LN epsilon inside the root, 1e-5 by default)
  posterior/{kernel [H_e, 2 Z], bias}     columns: mu (first Z), then log sigma
  read_attention/{kernel [H_d, 5], bias}  columns: g~x, g~y, log sigma^2, log delta~, log gamma
  write_attention/{kernel [H_d, 5], bias} (the same; both only with attention)
  write_patch/{kernel [H_d, write_n^2], bias}  the patch w, row-major (P outputs without attention)
The LSTM kernels are [inputs, 4H] with gate blocks f, i, o, g side by side (kernel_x LeCun-normal,
kernel_h orthogonal per block, bias 0 but 1 on f; with 'layer' both kernels start re-centred, as
in `cells.cell_parameters`); the dense layers are `flax.linen.Dense`
(LeCun-normal kernels, zero biases).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ln_jax.layers import cells
from ln_jax.layers import rnn_cells
from ln_jax.models import draw_attention

NORMS = ('none', 'layer_c', 'layer', 'group')


def gaussian_kl(mu_BxZ, log_sigma_BxZ):
  """KL(N(mu, sigma^2) || N(0, I)) per example, summed over the latent units: [B]."""
  return 0.5 * jnp.sum(jnp.square(mu_BxZ) + jnp.exp(2.0 * log_sigma_BxZ) - 2.0 * log_sigma_BxZ
                       - 1.0, axis=-1)


class DrawStep(nn.Module):
  """One glimpse (`__call__`) or one generation step (`generate_step`); see the module docstring.

  Carries: (canvas [B, P], encoder (h, c), decoder (h, c)) and (canvas, decoder (h, c)).
  """
  encoder_units: int
  decoder_units: int
  latent_size: int
  read_n: int
  write_n: int
  height: int
  width: int
  attention: bool = True
  norm: cells.NormSpec = cells.NormSpec('layer_c')
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  def setup(self):
    lstm = lambda units: rnn_cells.LSTMCell(units, norm=self.norm, dtype=self.dtype,
                                            forget_bias=self.forget_bias)
    self.encoder = lstm(self.encoder_units)
    self.decoder = lstm(self.decoder_units)
    self.posterior = nn.Dense(2 * self.latent_size, dtype=self.dtype)
    if self.attention:
      self.read_attention = nn.Dense(draw_attention.NUM_PARAMS, dtype=self.dtype)
      self.write_attention = nn.Dense(draw_attention.NUM_PARAMS, dtype=self.dtype)
      self.write_patch = nn.Dense(self.write_n ** 2, dtype=self.dtype)
    else:
      self.write_patch = nn.Dense(self.height * self.width, dtype=self.dtype)

  def _images(self, flat_BxP):
    return flat_BxP.reshape(flat_BxP.shape[0], self.height, self.width)

  def read(self, x_BxP, x_hat_BxP, h_dec_BxH):
    if not self.attention:
      return jnp.concatenate([x_BxP, x_hat_BxP], axis=-1)
    f_x, f_y, gamma = draw_attention.filterbanks(self.read_attention(h_dec_BxH), self.height,
                                                 self.width, self.read_n)
    return draw_attention.read(self._images(x_BxP), self._images(x_hat_BxP), f_x, f_y, gamma)

  def write(self, h_dec_BxH):
    patch = jnp.asarray(self.write_patch(h_dec_BxH), jnp.float32)
    if not self.attention:
      return patch
    f_x, f_y, gamma = draw_attention.filterbanks(self.write_attention(h_dec_BxH), self.height,
                                                 self.width, self.write_n)
    patch = patch.reshape(-1, self.write_n, self.write_n)
    return draw_attention.write(patch, f_x, f_y, gamma).reshape(patch.shape[0], -1)

  def __call__(self, carry, x_BxP, eps_BxZ):
    canvas, enc_state, dec_state = carry
    h_dec = dec_state[0]
    r = self.read(x_BxP, x_BxP - nn.sigmoid(canvas), h_dec)
    enc_state, h_enc = self.encoder(enc_state, jnp.concatenate([r, h_dec], axis=-1))
    q = jnp.asarray(self.posterior(h_enc), jnp.float32)
    mu, log_sigma = jnp.split(q, 2, axis=-1)
    z = mu + jnp.exp(log_sigma) * eps_BxZ
    dec_state, h_dec = self.decoder(dec_state, z)
    return (canvas + self.write(h_dec), enc_state, dec_state), gaussian_kl(mu, log_sigma)

  def generate_step(self, carry, z_BxZ):
    canvas, dec_state = carry
    dec_state, h_dec = self.decoder(dec_state, z_BxZ)
    canvas = canvas + self.write(h_dec)
    return (canvas, dec_state), nn.sigmoid(canvas)


def _scan(method, length: int, in_axes):
  """`DrawStep.<method>` over the steps: parameters shared, the inputs' leading axis scanned."""
  return nn.scan(lambda step, carry, *xs: getattr(step, method)(carry, *xs),
                 variable_broadcast='params', split_rngs={'params': False},
                 in_axes=in_axes, out_axes=0, length=length)


class DRAW(nn.Module):
  """DRAW over flat images [B, height * width] in [0, 1]; see the module docstring."""
  glimpses: int = 64
  encoder_units: int = 256
  decoder_units: int = 256
  latent_size: int = 100
  read_n: int = 2
  write_n: int = 5
  height: int = 28
  width: int = 28
  attention: bool = True
  norm: cells.NormSpec = cells.NormSpec('layer_c')
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  def setup(self):
    self.step = DrawStep(self.encoder_units, self.decoder_units, self.latent_size, self.read_n,
                         self.write_n, self.height, self.width, self.attention, self.norm,
                         self.forget_bias, self.dtype)

  def _zeros(self, batch: int, units: int):
    return (jnp.zeros((batch, units), jnp.float32), jnp.zeros((batch, units), jnp.float32))

  def _noise(self, noise, batch: int):
    """N(0, I) draws [T, B, Z] from the rng stream 'latent', unless given."""
    if noise is not None:
      return jnp.asarray(noise, jnp.float32)
    return jax.random.normal(self.make_rng('latent'), (self.glimpses, batch, self.latent_size))

  def __call__(self, x_BxP, train: bool = False, noise_TxBxZ=None):
    """{'logits': c_T [B, P], 'kl': [B, T]}; `noise_TxBxZ` fixes the eps_t (tests)."""
    del train  # no batch statistics: the same computation in training and evaluation
    x_BxP = jnp.asarray(x_BxP, jnp.float32)
    batch = x_BxP.shape[0]
    eps_TxBxZ = self._noise(noise_TxBxZ, batch)
    carry = (jnp.zeros_like(x_BxP), self._zeros(batch, self.encoder_units),
             self._zeros(batch, self.decoder_units))
    (canvas, _, _), kl_TxB = _scan('__call__', self.glimpses, (nn.broadcast, 0))(
        self.step, carry, x_BxP, eps_TxBxZ)
    return {'logits': canvas, 'kl': kl_TxB.T}

  def generate(self, num_samples: int, z_TxBxZ=None):
    """sigmoid(c_t) after every step t for z_t drawn from the prior (or given):
    [num_samples, T, P]."""
    z_TxBxZ = self._noise(z_TxBxZ, num_samples)
    carry = (jnp.zeros((num_samples, self.height * self.width), jnp.float32),
             self._zeros(num_samples, self.decoder_units))
    _, canvases_TxBxP = _scan('generate_step', self.glimpses, 0)(self.step, carry, z_TxBxZ)
    return jnp.swapaxes(canvases_TxBxP, 0, 1)
