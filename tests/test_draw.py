"""DRAW (ln_jax/models/draw.py, ln_jax/tasks/draw.py) against NumPy written from the DRAW paper's
equations: the attention filterbanks, read and write, the KL term, whole forward passes and
generation; the bound the task reports; its pictures; its config checks."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from ln_jax.errors import UserError
from ln_jax.layers import cells
from ln_jax.models import draw
from ln_jax.models import draw_attention
from ln_jax.tasks import draw as draw_task
from ln_jax.training import train
from numpy_rnn_reference import layer_norm
from numpy_rnn_reference import sigmoid
from test_errors import BAD_VALUES


# ---- NumPy DRAW, float64, one example and one filter at a time --------------------------------
def np_filterbanks(params, height, width, n):
  """Gregor et al. Eqs. 19-25 for one example: (F_X [n, width], F_Y [n, height], gamma); pixel
  positions a, b and filter indices i, j run from 1."""
  gx_, gy_, log_var, log_delta, log_gamma = params
  gx, gy = (width + 1) / 2 * (gx_ + 1), (height + 1) / 2 * (gy_ + 1)
  delta = (max(width, height) - 1) / (n - 1) * np.exp(log_delta) if n > 1 else 0.0
  var = np.exp(log_var)

  def bank(center, size):
    f = np.zeros((n, size))
    for i in range(1, n + 1):
      mu = center + (i - n / 2 - 0.5) * delta
      for a in range(1, size + 1):
        f[i - 1, a - 1] = np.exp(-(a - mu) ** 2 / (2 * var))
      f[i - 1] /= max(f[i - 1].sum(), 1e-8)  # the documented guard for filters off the image
    return f
  return bank(gx, width), bank(gy, height), np.exp(log_gamma)


def np_read(x, x_hat, params, n):
  f_x, f_y, gamma = np_filterbanks(params, *x.shape, n)
  return gamma * np.concatenate([(f_y @ x @ f_x.T).ravel(), (f_y @ x_hat @ f_x.T).ravel()])


def np_write(w, params, height, width):
  f_x, f_y, gamma = np_filterbanks(params, height, width, w.shape[0])
  return f_y.T @ w @ f_x / gamma


def np_lstm(p, kind, eps, x, h, c):
  """One LSTM step (gate order f, i, o, g): 'none', 'layer_c' (LN of c only) or 'layer'."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  ln = lambda name, a: layer_norm(a, p[name]['scale'], p[name]['bias'], eps)
  ah, ax = h @ p['kernel_h'], x @ p['kernel_x']
  pre = (ln('norm_h', ah) + ln('norm_x', ax) if kind == 'layer' else ah + ax) + p['bias']
  f, i, o, g = np.split(pre, 4, axis=-1)
  c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  return sigmoid(o) * np.tanh(c if kind == 'none' else ln('norm_c', c)), c


def np_dense(p, x):
  return x @ np.asarray(p['kernel'], np.float64) + np.asarray(p['bias'], np.float64)


def np_write_step(p, model, h_dec):
  """Decoder state -> the canvas increment [B, P]."""
  patches = np_dense(p['write_patch'], h_dec).reshape(-1, model.write_n, model.write_n)
  params = np_dense(p['write_attention'], h_dec)
  return np.stack([np_write(w, q, model.height, model.width).ravel()
                   for w, q in zip(patches, params)])


def np_draw(params, model, x, eps):
  """DRAW's forward pass: (canvas logits [B, P], KL [B, T])."""
  p, kind, norm_eps = params['step'], model.norm.kind, model.norm.epsilon
  batch = x.shape[0]
  zeros = lambda units: (np.zeros((batch, units)), np.zeros((batch, units)))
  canvas, (h_enc, c_enc), (h_dec, c_dec) = (np.zeros_like(x), zeros(model.encoder_units),
                                            zeros(model.decoder_units))
  kls = []
  images = lambda flat: flat.reshape(model.height, model.width)
  for t in range(model.glimpses):
    x_hat = x - sigmoid(canvas)
    read_params = np_dense(p['read_attention'], h_dec)
    r = np.stack([np_read(images(a), images(b), q, model.read_n)
                  for a, b, q in zip(x, x_hat, read_params)])
    h_enc, c_enc = np_lstm(p['encoder'], kind, norm_eps, np.concatenate([r, h_dec], -1), h_enc,
                           c_enc)
    q = np_dense(p['posterior'], h_enc)
    mu, log_sigma = np.split(q, 2, axis=-1)
    kls.append(np.sum(-log_sigma + (np.exp(2 * log_sigma) + mu ** 2) / 2 - 0.5, -1))
    z = mu + np.exp(log_sigma) * eps[t]
    h_dec, c_dec = np_lstm(p['decoder'], kind, norm_eps, z, h_dec, c_dec)
    canvas = canvas + np_write_step(p, model, h_dec)
  return canvas, np.stack(kls, -1)


# ---- attention --------------------------------------------------------------------------------
def _random_attention(rng, batch):
  """Attention numbers around their defaults, the grid off centre and scaled."""
  return rng.normal(0.0, 0.5, (batch, draw_attention.NUM_PARAMS))


@pytest.mark.parametrize('n', [1, 2, 5])
def test_filterbanks_match_the_papers_equations(n):
  height, width = 7, 11  # not square: a swapped axis shows
  params = _random_attention(np.random.default_rng(n), 4)
  f_x, f_y, gamma = draw_attention.filterbanks(jnp.asarray(params), height, width, n)
  assert f_x.shape == (4, n, width) and f_y.shape == (4, n, height)
  for b in range(4):
    ref_x, ref_y, ref_gamma = np_filterbanks(params[b], height, width, n)
    np.testing.assert_allclose(f_x[b], ref_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f_y[b], ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gamma[b], ref_gamma, rtol=1e-6)


def test_centred_attention_spans_the_image_and_far_filters_stay_finite():
  # g~ = 0 centres the grid: with N = 2 and delta~ = 1 the filters sit at (A+1)/2 -+ (A-1)/2,
  # the first and last pixel.
  f_x, _, _ = draw_attention.filterbanks(jnp.zeros((1, 5)), 28, 28, 2)
  assert np.argmax(f_x[0, 0]) == 0 and np.argmax(f_x[0, 1]) == 27
  far = jnp.asarray([[50.0, -50.0, -8.0, 0.0, 0.0]])  # centre far outside, sigma tiny
  f_x, f_y, _ = draw_attention.filterbanks(far, 28, 28, 5)
  assert np.all(np.isfinite(f_x)) and np.all(np.isfinite(f_y))


def test_read_and_write_match_the_papers_equations():
  rng = np.random.default_rng(0)
  height, width, batch = 6, 9, 3
  x, x_hat = rng.random((batch, height, width)), rng.normal(size=(batch, height, width))
  read_params, write_params = _random_attention(rng, batch), _random_attention(rng, batch)
  patches = rng.normal(size=(batch, 4, 4))
  f_x, f_y, gamma = draw_attention.filterbanks(jnp.asarray(read_params), height, width, 3)
  read = draw_attention.read(jnp.asarray(x), jnp.asarray(x_hat), f_x, f_y, gamma)
  f_x, f_y, gamma = draw_attention.filterbanks(jnp.asarray(write_params), height, width, 4)
  written = draw_attention.write(jnp.asarray(patches), f_x, f_y, gamma)
  for b in range(batch):
    np.testing.assert_allclose(read[b], np_read(x[b], x_hat[b], read_params[b], 3), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(written[b], np_write(patches[b], write_params[b], height, width),
                               rtol=1e-4, atol=1e-5)


# ---- the latent term --------------------------------------------------------------------------
def test_kl_is_the_closed_form_and_agrees_with_monte_carlo():
  rng = np.random.default_rng(1)
  mu, log_sigma = rng.normal(size=(2, 3)), rng.normal(0.0, 0.5, (2, 3))
  kl = np.asarray(draw.gaussian_kl(jnp.asarray(mu), jnp.asarray(log_sigma)))
  sigma = np.exp(log_sigma)
  closed = np.sum(np.log(1 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5, -1)
  np.testing.assert_allclose(kl, closed, rtol=1e-5)
  # E_q[log q(z) - log p(z)] from 400,000 draws, within 4 standard errors.
  z = mu + sigma * rng.normal(size=(400_000, 2, 3))
  log_ratio = np.sum(-np.log(sigma) - 0.5 * ((z - mu) / sigma) ** 2 + 0.5 * z ** 2, -1)
  error = 4 * log_ratio.std(0) / np.sqrt(len(z))
  assert np.all(np.abs(log_ratio.mean(0) - kl) < error), (log_ratio.mean(0), kl)


# ---- whole model ------------------------------------------------------------------------------
def _model(kind: str, **overrides):
  fields = dict(glimpses=3, encoder_units=6, decoder_units=5, latent_size=4, read_n=2,
                write_n=3, height=6, width=8, norm=cells.NormSpec(kind))
  return draw.DRAW(**{**fields, **overrides})


def _init(model, x, seed=0):
  # Compiled as a whole: op by op, each initializer and step would compile on its own.
  return jax.jit(model.init)({'params': jax.random.PRNGKey(seed),
                              'latent': jax.random.PRNGKey(seed)}, x)


def _perturbed_params(model, x, seed=0):
  """Initial parameters plus noise, so attention, norms and biases all leave their defaults."""
  variables = _init(model, x, seed)
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [np.asarray(a) + rng.normal(0.0, 0.3, a.shape).astype(a.dtype)
                                   for a in leaves])


@pytest.mark.parametrize('kind', ['none', 'layer_c', 'layer'])
def test_forward_pass_matches_numpy(kind):
  model = _model(kind)
  rng = np.random.default_rng(2)
  x = (rng.random((3, model.height * model.width)) < 0.4).astype(np.float32)
  variables = _perturbed_params(model, x)
  eps = rng.normal(size=(model.glimpses, 3, model.latent_size)).astype(np.float32)
  out = jax.jit(model.apply)(variables, x, noise_TxBxZ=eps)
  logits, kl = np_draw(variables['params'], model, x.astype(np.float64), eps)
  np.testing.assert_allclose(out['logits'], logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out['kl'], kl, rtol=1e-4, atol=1e-4)


def test_generation_matches_numpy_and_draws_from_the_rng_stream():
  model = _model('layer_c')
  x = np.zeros((1, model.height * model.width), np.float32)
  variables = _perturbed_params(model, x, seed=3)
  z = np.random.default_rng(3).normal(size=(model.glimpses, 2, model.latent_size))
  generate = jax.jit(model.apply, static_argnums=1, static_argnames='method')
  canvases = generate(variables, 2, z.astype(np.float32), method=draw.DRAW.generate)
  assert canvases.shape == (2, model.glimpses, model.height * model.width)
  p = variables['params']['step']
  h, c, canvas = np.zeros((2, model.decoder_units)), np.zeros((2, model.decoder_units)), 0.0
  for t in range(model.glimpses):
    h, c = np_lstm(p['decoder'], 'layer_c', model.norm.epsilon, z[t], h, c)
    canvas = canvas + np_write_step(p, model, h)
    np.testing.assert_allclose(canvases[:, t], sigmoid(canvas), rtol=1e-4, atol=1e-5)
  draws = [generate(variables, 2, method=draw.DRAW.generate,
                    rngs={'latent': jax.random.PRNGKey(k)}) for k in (0, 0, 1)]
  np.testing.assert_array_equal(draws[0], draws[1])
  assert not np.allclose(draws[0], draws[2])


def test_without_attention_the_model_reads_and_writes_whole_images():
  model = _model('none', attention=False)
  x = np.ones((2, model.height * model.width), np.float32)
  variables = _init(model, x)
  step = variables['params']['step']
  assert step['encoder']['kernel_x'].shape == (2 * 48 + model.decoder_units, 4 * 6)
  assert step['write_patch']['kernel'].shape == (model.decoder_units, 48)
  assert 'read_attention' not in step
  out = jax.eval_shape(lambda v: model.apply(v, x, rngs={'latent': jax.random.PRNGKey(1)}),
                       variables)
  assert out['logits'].shape == (2, 48) and out['kl'].shape == (2, model.glimpses)


# ---- the task ---------------------------------------------------------------------------------
def test_loss_is_the_negative_bound_in_nats_and_stable_for_large_logits():
  logits = np.array([[2.0, -1.0, 100.0, -100.0], [0.5, 0.0, -100.0, 100.0]], np.float32)
  image = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], np.uint8)
  kl = np.array([[0.5, 1.5], [2.0, 0.25]], np.float32)
  out = draw_task.loss({'logits': jnp.asarray(logits), 'kl': jnp.asarray(kl)}, {'image': image})
  p = sigmoid(logits[:, :2].astype(np.float64))
  finite_part = -np.sum(image[:, :2] * np.log(p) + (1 - image[:, :2]) * np.log(1 - p), -1)
  expected = finite_part + np.array([0.0, 200.0])  # logit 100 for a 0 costs 100 nats
  np.testing.assert_allclose(out['reconstruction'], expected, rtol=1e-5)
  np.testing.assert_allclose(out['kl'], kl.sum(-1), rtol=1e-6)
  np.testing.assert_allclose(out['loss'], expected + kl.sum(-1), rtol=1e-5)


def test_pictures_are_a_grid_of_samples_and_a_strip_over_glimpses():
  config = load_config('configs/draw_mnist.py', 'tiny')
  model = draw_task.create_model(config)
  variables = _init(model, np.zeros((1, 784), np.float32))
  pictures = draw_task.pictures(model, variables, config, jax.random.PRNGKey(1))
  side = draw_task.SAMPLE_GRID * 29 + 1  # 28 pixels and a 1-pixel border per image
  assert pictures['samples'].shape == (side, side)
  steps = min(draw_task.STRIP_STEPS, config.model.glimpses)
  assert pictures['glimpses'].shape == (draw_task.STRIP_SAMPLES * 29 + 1, steps * 29 + 1)
  assert all(p.dtype == np.uint8 for p in pictures.values())
  again = draw_task.pictures(model, variables, config, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(pictures['samples'], again['samples'])


# A bad value for each key of configs/draw_mnist.py that the other configs lack, or whose message
# differs here; the keys they share take test_errors.BAD_VALUES.
DRAW_BAD_VALUES = {
    'norm': ('norm=rms', "norm='rms' is not a DRAW cell; choose one of none, layer_c"),
    'norm_options.ghost_batches': ('norm_options.ghost_batches=3',
                                   'norm_options.ghost_batches=3 must divide batch_size=32'),
    'model.glimpses': ('model.glimpses=0', 'model.glimpses=0 must be at least 1'),
    'model.encoder_units': ('model.encoder_units=0', 'model.encoder_units=0 must be at least 1'),
    'model.decoder_units': ('model.decoder_units=-2', 'model.decoder_units=-2 must be at least 1'),
    'model.latent_size': ('model.latent_size=0', 'model.latent_size=0 must be at least 1'),
    'model.read_n': ('model.read_n=29', 'model.read_n=29: the attention window must be 1..28'),
    'model.write_n': ('model.write_n=0', 'model.write_n=0: the attention window must be 1..28'),
    'model.attention': ('model.attention=maybe', "model.attention='maybe' is not a boolean"),
    'model.image_height': ('model.image_height=27', 'model.image_height x model.image_width = '
                                                    '27x28 must hold the 784 pixels'),
    'model.image_width': ('model.image_width=0', 'model.read_n=2: the attention window must be '
                                                 '1..0'),
    'model.forget_bias': ('model.forget_bias=1e999', 'model.forget_bias=inf must be a finite'),
    'data.source': ('data.source=web', "unknown data.source 'web'; choose one of sampled, amat"),
    'data.dir': ('data.source=amat,data.dir=/no/such/dir', 'data.source=amat needs data.dir'),
    'data.binarize_seed': ('data.binarize_seed=-1', 'data.binarize_seed=-1 must be in'),
    'data.train_size': ('data.train_size=0', 'data.train_size=0 must be positive'),
    'data.valid_size': ('data.valid_size=-1', 'data.valid_size=-1 must be >= 0'),
    'data.test_size': ('data.test_size=-1', 'data.test_size=-1 must be >= 0'),
    'data.synthetic_train_size': ('data.synthetic_train_size=0',
                                  'data.synthetic_train_size=0 must be positive'),
    'data.synthetic_valid_size': ('data.synthetic_valid_size=0',
                                  'data.synthetic_valid_size=0 must be positive'),
    'data.synthetic_test_size': ('data.synthetic_test_size=-5',
                                 'data.synthetic_test_size=-5 must be positive'),
}


def _draw_keys():
  from ln_jax.training import rundir
  return sorted(rundir.flatten(load_config('configs/draw_mnist.py', 'tiny').to_dict()))


@pytest.mark.parametrize('key', _draw_keys())
def test_bad_value_of_each_config_key_is_refused_before_anything_is_written(key, tmp_path):
  variant, message = DRAW_BAD_VALUES.get(key) or BAD_VALUES[key]
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=re.escape(message)):
    train.train_and_evaluate(load_config('configs/draw_mnist.py', f'tiny,{variant}'),
                             str(workdir))
  assert not workdir.exists()


def test_batch_norm_cells_are_refused_with_one_line(tmp_path):
  with pytest.raises(UserError, match="norm='batch' is not a DRAW cell"):
    train.train_and_evaluate(load_config('configs/draw_mnist.py', 'tiny,norm=batch'),
                             str(tmp_path / 'run'))
