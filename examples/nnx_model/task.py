"""A researcher's own Flax NNX model, trained by ln_jax's loop: a recurrent sequence classifier.

Each example is a sequence of `data.num_steps` steps of `data.num_features` features whose
scales span two orders of magnitude; its label says whether a fixed hidden direction, summed over
the steps, is positive, so the model has to integrate the whole sequence. The model is written in
Flax NNX from ln_jax.nnx's pieces: the LSTM cell under `nnx.RNN` (normalized as `config.norm`
says: 'layer' is the paper's LN-LSTM, 'batch' recurrent BN with per-step statistics, ...), then
`ln_jax.nnx.LayerNorm` and a linear layer to the logits.

`create_model` hands the loop (a Linen program) the NNX class through
`flax.nnx.bridge.to_linen`, as ln_jax/models/mlp_nnx.py does: the NNX Params become the 'params'
collection and the BatchStats 'batch_stats', so training, checkpoints, resume, vmapped seeds and
compare are those of every other model. Its config (config.py beside this file) names this file
in `config.task`.
"""

import dataclasses

from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax

import ln_jax.nnx as lnx
from ln_jax import norms
from ln_jax.tasks import Metric
from ln_jax.tasks import Task

NUM_CLASSES = 2


class SequenceClassifier(nnx.Module):
  """LSTM cell over the sequence, LayerNorm of its last output, a linear layer to the logits."""

  def __init__(self, in_features: int, hidden_size: int, num_classes: int, *, norm,
               rngs: nnx.Rngs):
    self.rnn = nnx.RNN(lnx.LSTMCell(in_features, hidden_size, norm=norm, rngs=rngs))
    self.norm = lnx.LayerNorm(hidden_size, rngs=rngs)
    self.logits = nnx.Linear(hidden_size, num_classes, rngs=rngs)

  def __call__(self, x_BxTxD, train: bool = False):
    # nnx.RNN calls the cell with (carry, x) only, so recurrent BN takes its mode (batch
    # statistics or running averages) from the module: set it from the loop's `train`.
    if train:
      self.train()
    else:
      self.eval()
    h_BxH = self.rnn(x_BxTxD)[:, -1]
    return self.logits(nnx.relu(self.norm(h_BxH)))


def create_model(config):
  spec = norms.recurrent_spec(config)  # config.norm and norm_options as the cell's NormSpec
  if spec.max_steps is None:  # recurrent BN's T_max: the sequence length
    spec = dataclasses.replace(spec, max_steps=config.data.num_steps)
  return nnx.bridge.to_linen(SequenceClassifier, config.data.num_features,
                             config.model.hidden_size, NUM_CLASSES, norm=spec)


def load_splits(config):
  """Train / valid / test sequences, the same for every seed of a run (data.seed fixes them)."""
  d = config.data
  rng = np.random.default_rng(d.seed)
  scales = np.logspace(-1.0, 1.0, d.num_features)  # feature scales from 0.1 to 10
  direction = rng.standard_normal(d.num_features) / scales  # every feature counts alike

  def make(n):
    x = rng.standard_normal((n, d.num_steps, d.num_features)) * scales
    label = (np.einsum('btd,d->b', x, direction) > 0).astype(np.int32)
    return {'x': x.astype(np.float32), 'label': label}
  return {'train': make(d.num_train), 'valid': make(d.num_valid), 'test': make(d.num_test)}


def loss(logits, batch):
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  return {'loss': nll, 'error': jnp.asarray(jnp.argmax(logits, -1) != batch['label'],
                                            jnp.float32)}


def check_config(config):
  d, cell_norms = config.data, norms.RECURRENT_NORMS + norms.CELL_ONLY_NORMS
  return [(config.norm in cell_norms,
           f'norm={config.norm!r} has no recurrent cell; choose one of {", ".join(cell_norms)}'),
          (d.num_train > 0 and d.num_valid >= 0 and d.num_test >= 0,
           f'data.num_train={d.num_train} must be positive, num_valid and num_test >= 0'),
          (d.num_steps > 0 and d.num_features > 0,
           f'data.num_steps={d.num_steps} and data.num_features={d.num_features} must be '
           'positive')]


def get_task():
  return Task(name='nnx_sequences', load_splits=load_splits, create_model=create_model,
              loss=loss, metrics=(Metric('loss', 'nats'), Metric('error', '%', scale=100.0)),
              select_by='error', model_inputs=lambda batch: batch['x'],
              check_config=check_config,
              normalized_widths=lambda config: (config.model.hidden_size,))
