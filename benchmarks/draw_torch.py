"""DRAW (Gregor et al. 2015) in plain PyTorch, eager, for the speed benchmark.

The same network as `ln_jax.models.draw` at the same sizes, written the way a PyTorch user would:
`torch.nn.LSTMCell` for the plain LSTMs and, for 'layer_c', a small cell with one matmul over
[x, h] and `torch.nn.LayerNorm` on the cell state:
h = sigmoid(o) * tanh(LN(c)). Per glimpse t (canvas c, decoder state h_dec from step t - 1):

  x^ = x - sigmoid(c);  r = read(x, x^, h_dec)            (N_read x N_read Gaussian grid)
  h_enc = LSTM_enc([r, h_dec]);  z = mu + sigma * eps      (mu, log sigma linear in h_enc)
  h_dec = LSTM_dec(z);  c = c + write(h_dec)              (N_write x N_write patch)

loss = the Bernoulli NLL of sigmoid(c_T) summed over the pixels + sum_t KL(q_t || N(0, I)),
averaged over the batch. A training step is forward, backward, global-norm clipping (as
configs/draw_mnist.py clips) and an Adam step on one fixed batch of binary images (the benchmark
times the step, not the data).
"""

from __future__ import annotations

import torch
from torch import nn

HEIGHT = WIDTH = 28
ATTENTION_PARAMS = 5  # g~x, g~y, log sigma^2, log delta~, log gamma
NORMALIZER_EPSILON = 1e-8
NORMS = ('none', 'layer_c')
FORGET_BIAS = 1.0


class LayerNormCLSTMCell(nn.Module):
  """(f, i, o, g) = W [x, h] + b; c = s(f) c + s(i) tanh(g); h = s(o) tanh(LN(c))."""

  def __init__(self, inputs: int, units: int, epsilon: float = 1e-5):
    super().__init__()
    self.gates = nn.Linear(inputs + units, 4 * units)  # one matmul for W_x x + W_h h
    self.norm_c = nn.LayerNorm(units, eps=epsilon)
    with torch.no_grad():
      self.gates.bias.zero_()
      self.gates.bias[:units] = FORGET_BIAS  # gate order f, i, o, g

  def forward(self, x, state):
    h, c = state
    f, i, o, g = self.gates(torch.cat([x, h], dim=-1)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(self.norm_c(c)), c


def lstm_cell(norm: str, inputs: int, units: int) -> nn.Module:
  if norm == 'layer_c':
    return LayerNormCLSTMCell(inputs, units)
  cell = nn.LSTMCell(inputs, units)
  # One bias per gate, as ln_jax's cell has: LSTMCell's second bias stays 0 and is not trained.
  with torch.no_grad():
    cell.bias_hh.zero_()
    cell.bias_ih.zero_()
    cell.bias_ih[units:2 * units] = FORGET_BIAS  # gate order i, f, g, o
  cell.bias_hh.requires_grad_(False)
  return cell


def filterbank(center, variance, stride, size: int, n: int):
  """F [B, n, size]: normalized Gaussians at mu^i = center + (i - n/2 - 0.5) stride, i = 1..n."""
  offsets = torch.arange(1, n + 1, dtype=torch.float32) - n / 2.0 - 0.5
  mu = center[:, None] + offsets[None, :] * stride[:, None]
  positions = torch.arange(1, size + 1, dtype=torch.float32)
  f = torch.exp(-(positions[None, None, :] - mu[:, :, None]).square()
                / (2.0 * variance[:, None, None]))
  return f / f.sum(dim=-1, keepdim=True).clamp_min(NORMALIZER_EPSILON)


def filterbanks(params, n: int):
  """(F_X [B, n, W], F_Y [B, n, H], gamma [B]) from the five attention numbers [B, 5]."""
  gx_, gy_, log_variance, log_stride, log_gamma = params.unbind(dim=-1)
  gx = (WIDTH + 1) / 2.0 * (gx_ + 1.0)
  gy = (HEIGHT + 1) / 2.0 * (gy_ + 1.0)
  stride = (max(WIDTH, HEIGHT) - 1) / max(n - 1, 1) * torch.exp(log_stride)
  variance = torch.exp(log_variance)
  return (filterbank(gx, variance, stride, WIDTH, n), filterbank(gy, variance, stride, HEIGHT, n),
          torch.exp(log_gamma))


class Draw(nn.Module):
  """DRAW with read and write attention; `forward` returns the per-example loss [B]."""

  def __init__(self, glimpses: int = 64, units: int = 256, latent: int = 100, read_n: int = 2,
               write_n: int = 5, norm: str = 'none'):
    super().__init__()
    if norm not in NORMS:
      raise ValueError(f'norm {norm!r}: choose one of {", ".join(NORMS)}')
    self.glimpses, self.latent, self.read_n, self.write_n = glimpses, latent, read_n, write_n
    self.encoder = lstm_cell(norm, 2 * read_n * read_n + units, units)
    self.decoder = lstm_cell(norm, latent, units)
    self.read_attention = nn.Linear(units, ATTENTION_PARAMS)
    self.write_attention = nn.Linear(units, ATTENTION_PARAMS)
    self.write_patch = nn.Linear(units, write_n * write_n)
    self.posterior = nn.Linear(units, 2 * latent)  # mu and log sigma

  def _read(self, x, x_hat, h_dec):
    f_x, f_y, gamma = filterbanks(self.read_attention(h_dec), self.read_n)
    # F_Y image F_X^T for x and x^ at once: [B, 2, N, N]
    images = torch.stack([x, x_hat], dim=1)
    patches = f_y[:, None] @ images @ f_x[:, None].transpose(-1, -2)
    return gamma[:, None] * patches.flatten(1)

  def _write(self, h_dec):
    f_x, f_y, gamma = filterbanks(self.write_attention(h_dec), self.write_n)
    patch = self.write_patch(h_dec).view(-1, self.write_n, self.write_n)
    return (f_y.transpose(-1, -2) @ patch @ f_x) / gamma[:, None, None]

  def forward(self, x_BxHxW):
    batch = x_BxHxW.shape[0]
    units = self.read_attention.in_features
    zeros = lambda: x_BxHxW.new_zeros(batch, units)
    enc, dec = (zeros(), zeros()), (zeros(), zeros())
    canvas = torch.zeros_like(x_BxHxW)
    kl = x_BxHxW.new_zeros(batch)
    for _ in range(self.glimpses):
      h_dec = dec[0]
      r = self._read(x_BxHxW, x_BxHxW - torch.sigmoid(canvas), h_dec)
      enc = self.encoder(torch.cat([r, h_dec], dim=-1), enc)
      mu, log_sigma = self.posterior(enc[0]).chunk(2, dim=-1)
      sigma = torch.exp(log_sigma)
      z = mu + sigma * torch.randn_like(mu)
      kl = kl + 0.5 * (mu.square() + sigma.square() - 2.0 * log_sigma - 1.0).sum(dim=-1)
      dec = self.decoder(z, dec)
      canvas = canvas + self._write(dec[0])
    nll = nn.functional.binary_cross_entropy_with_logits(canvas, x_BxHxW, reduction='none')
    return nll.flatten(1).sum(dim=-1) + kl


def num_parameters(model: nn.Module) -> int:
  """The trained parameters (LSTMCell's fixed second bias is not one)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def binary_images(batch_size: int, seed: int = 0):
  """A fixed batch of binary 28x28 images, about 13% of pixels on (as binarized MNIST)."""
  generator = torch.Generator().manual_seed(seed)
  return (torch.rand(batch_size, HEIGHT, WIDTH, generator=generator) < 0.13).float()


class TorchDrawRunner:
  """Training steps (forward, backward, global-norm clipping when `grad_clip_norm`, Adam) of
  `Draw` on a fixed batch; `run(n)` -> n."""

  name = 'torch'

  def __init__(self, *, glimpses: int, units: int, latent: int, read_n: int, write_n: int,
               norm: str, batch_size: int, learning_rate: float = 1e-3,
               grad_clip_norm: float | None = None, seed: int = 0):
    torch.manual_seed(seed)
    self.model = Draw(glimpses, units, latent, read_n, write_n, norm)
    self.model.train()
    self._parameters = [p for p in self.model.parameters() if p.requires_grad]
    self._optimizer = torch.optim.Adam(self._parameters, lr=learning_rate)
    self._images = binary_images(batch_size, seed)
    self._clip = grad_clip_norm

  def run(self, num_steps: int) -> int:
    for _ in range(num_steps):
      loss = self.model(self._images).mean()
      self._optimizer.zero_grad(set_to_none=True)
      loss.backward()
      if self._clip:
        nn.utils.clip_grad_norm_(self._parameters, self._clip)
      self._optimizer.step()
    return num_steps

  def warmup(self, num_steps: int) -> None:
    self.run(max(1, num_steps))
