"""Training throughput of ln_jax against the usual ways to write the same training loop.

Every contender trains the same model (by default the paper's 784-1000-1000-10 MLP) with Adam
on the same 55,000 uint8 images, and is timed in steady state, compilation excluded:
- `ln_jax`: what `train.train_and_evaluate` runs (`step.train_steps`): data on the device,
  batches gathered there from a seeded permutation, `steps_per_call` optimizer steps per
  compiled call (`lax.scan`), donated state.
- `jit_loop`: the Flax-examples style: one jitted `train_step` per Python iteration, batches
  indexed on the host in NumPy and copied in, no buffer donation, metrics kept as device arrays.
- `torch`: PyTorch eager on the CPU (when torch is installed), the same layers and optimizer.

Contenders are measured in interleaved rounds, so a load spike on a shared machine hits them
all alike; the median rate over the rounds is the figure reported.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from ln_jax import data as data_lib
from ln_jax import models
from ln_jax import tasks
from ln_jax.training import optimizers
from ln_jax.training import parallel
from ln_jax.training import step as step_lib
from ln_jax.training import window as window_lib
from ln_jax.training.schedule import Schedule
from benchmarks import roofline

NUM_TRAIN = 55_000


def make_dataset(num_examples: int = NUM_TRAIN, seed: int = 0):
  """Synthetic digits of MNIST's shape (the speed does not depend on the pixels)."""
  images, labels = data_lib.synthetic(seed, num_examples, 0)['train']
  return (np.ascontiguousarray(images.reshape(num_examples, -1), np.uint8),
          np.asarray(labels, np.int32))


def new_state(config, images, seed_key=None):
  """The train state `train_and_evaluate` starts a run of `config` from."""
  task = tasks.load_task(config)
  init_key = jax.random.split(jax.random.PRNGKey(config.seed))[0] if seed_key is None else (
      seed_key)
  return step_lib.create_train_state(config, task, task.create_model(config),
                                     optimizers.make_optimizer(config), init_key, init_key,
                                     {'image': images[:1]})


class FusedRunner:
  """ln_jax's loop: `step.train_steps` calls of up to `config.steps_per_call` steps. Batches
  are {'image', 'label'}, or {'image'} alone without `labels` (DRAW's)."""

  name = 'ln_jax'

  def __init__(self, config, images, labels=None):
    self._config = config
    self._mesh = parallel.make_mesh(config.num_devices)
    parallel.check_divisible(config.batch_size, self._mesh)
    self._data_key = jax.random.split(jax.random.PRNGKey(config.seed))[1]
    self._state = parallel.replicate(new_state(config, images), self._mesh)
    data = {'image': images} if labels is None else {'image': images, 'label': labels}
    self._data = parallel.replicate(data, self._mesh)
    self._num_examples = len(images)
    # Evaluation far away: chunks stop only at epoch ends, as in a long run.
    config = config.copy_and_resolve_references()
    config.num_epochs, config.eval_every_epochs = 1e6, 1e6
    self._schedule = Schedule(config, self._num_examples)
    self._step, self._epoch, self._order = 0, -1, None
    self._totals = parallel.replicate(
        window_lib.empty_window(self._state.task.metric_names), self._mesh)

  def state_bytes(self) -> int:
    """Bytes of the parameters and optimizer state: the working set every step reads."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(self._state) if hasattr(leaf, 'nbytes'))

  def bytes_per_step(self) -> float:
    """XLA's count of the bytes one training step accesses (see `roofline`)."""
    batch = jax.tree.map(lambda a: a[:self._config.batch_size], self._data)
    return roofline.bytes_per_step(self._state, batch)

  def run(self, num_steps: int) -> int:
    """At least `num_steps` steps, in whole calls (no new call size to compile); the count."""
    start = self._step
    end = self._step + num_steps
    while self._step < end:
      epoch, position = divmod(self._step, self._schedule.steps_per_epoch)
      if epoch != self._epoch:
        self._order = parallel.replicate(
            step_lib.epoch_order(self._data_key, epoch, self._num_examples), self._mesh)
        self._epoch = epoch
      n = self._schedule.next_chunk(self._step)
      self._state, self._totals = step_lib.train_steps(
          self._state, self._data, self._order, position, self._totals,
          num_steps=n, batch_size=self._config.batch_size, mesh=self._mesh)
      self._step += n
    jax.block_until_ready(self._totals)
    return self._step - start

  def warmup(self, num_steps: int) -> None:
    """Compiles both call sizes a long run uses: full chunks and the epoch's remainder."""
    chunk = min(self._config.steps_per_call, self._schedule.steps_per_epoch)
    self.run(max(num_steps, chunk))
    tail = self._schedule.steps_per_epoch % chunk
    if tail:
      scratch = jax.tree.map(jax.numpy.copy, self._state)
      jax.block_until_ready(step_lib.train_steps(
          scratch, self._data, self._order, 0, self._totals, num_steps=tail,
          batch_size=self._config.batch_size, mesh=self._mesh))


class JitLoopRunner:
  """One jitted step per Python iteration, host-side NumPy batches (the Flax MNIST example)."""

  name = 'jit_loop'

  def __init__(self, config, images, labels):
    self._batch_size = config.batch_size
    self._state = new_state(config, images, jax.random.PRNGKey(config.seed))
    self._images, self._labels = images, labels
    self._step_fn = jax.jit(step_lib.train_step)  # the example donates nothing
    self._rng = np.random.default_rng(config.seed)
    self._steps_per_epoch = len(labels) // config.batch_size
    self._position, self._perm = 0, None

  def run(self, num_steps: int) -> int:
    metrics = []
    b = self._batch_size
    for _ in range(num_steps):
      if self._position == 0:
        self._perm = self._rng.permutation(len(self._labels))
      idx = self._perm[self._position * b:(self._position + 1) * b]
      self._state, step_metrics = self._step_fn(
          self._state, {'image': self._images[idx], 'label': self._labels[idx]})
      metrics.append(step_metrics)
      self._position = (self._position + 1) % self._steps_per_epoch
    jax.block_until_ready((self._state, metrics))
    return num_steps

  def warmup(self, num_steps: int) -> None:
    self.run(num_steps)


class TorchBatches:
  """Batch indices in a fresh seeded `torch.randperm` order each epoch (PyTorch's DataLoader
  shuffling, without its worker processes), for the PyTorch contenders."""

  def __init__(self, torch, num_examples: int, batch_size: int, seed: int):
    self._torch, self._num_examples, self._batch_size = torch, num_examples, batch_size
    self._generator = torch.Generator().manual_seed(seed)
    self._steps_per_epoch = num_examples // batch_size
    self._position, self._perm = 0, None

  def next(self):
    if self._position == 0:
      self._perm = self._torch.randperm(self._num_examples, generator=self._generator)
    b = self._batch_size
    idx = self._perm[self._position * b:(self._position + 1) * b]
    self._position = (self._position + 1) % self._steps_per_epoch
    return idx


class TorchRunner:
  """PyTorch eager on the CPU: the same layers, initial learning rate and Adam."""

  name = 'torch'
  NORMS = ('layer', 'batch', 'none')  # the others have no PyTorch twin here

  def __init__(self, config, images, labels):
    import torch  # optional: the `bench` extra

    self._torch = torch
    torch.manual_seed(config.seed)
    norm_logits = config.model.norm_logits
    if norm_logits is None:
      norm_logits = models.norm_logits_default(config.norm)
    widths = [images.shape[1], *config.model.hidden_sizes, config.model.num_classes]
    layers = []
    for i in range(len(widths) - 1):
      is_logits = i == len(widths) - 2
      normalized = config.norm != 'none' and (not is_logits or norm_logits)
      layers.append(torch.nn.Linear(widths[i], widths[i + 1], bias=not normalized))
      if normalized:
        layers.append(self._norm(config, widths[i + 1]))
      if not is_logits:
        layers.append(torch.nn.ReLU())
    self._model = torch.nn.Sequential(*layers)
    self._model.train()
    self._optimizer = torch.optim.Adam(self._model.parameters(), lr=config.learning_rate)
    self._images = torch.from_numpy(images)
    self._labels = torch.from_numpy(labels.astype(np.int64))
    self._batches = TorchBatches(torch, len(labels), config.batch_size, config.seed)

  def _norm(self, config, width):
    nn = self._torch.nn
    if config.norm == 'layer':
      return nn.LayerNorm(width, eps=config.norm_options.epsilon)
    # PyTorch's momentum weighs the new batch: 1 - (Flax convention).
    options = config.norm_options
    return nn.BatchNorm1d(width, eps=options.epsilon, momentum=1.0 - options.momentum)

  def run(self, num_steps: int) -> int:
    torch = self._torch
    for _ in range(num_steps):
      idx = self._batches.next()
      x = self._images[idx].float().div_(255.0)
      loss = torch.nn.functional.cross_entropy(self._model(x), self._labels[idx])
      self._optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self._optimizer.step()
    return num_steps

  def warmup(self, num_steps: int) -> None:
    self.run(num_steps)


RUNNERS = {runner.name: runner for runner in (FusedRunner, JitLoopRunner, TorchRunner)}


def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def measure(runners: dict, steps: int, rounds: int, warmup_steps: int) -> dict:
  """Steps/s of each runner: warm up (compiles), then `rounds` interleaved timed windows.

  Each runner's window is about `steps / rounds` steps (whole fused calls for ln_jax).
  Returns {name: {'steps_per_s': median over rounds, 'rounds': [...], 'steps': [...],
  'cpu_per_wall': [...]}}; the last is this process's CPU time over the wall time of each window,
  which drops when other programs take the cores (a sign the figures are not steady).
  """
  out = {name: {'rounds': [], 'steps': [], 'cpu_per_wall': []} for name in runners}
  for runner in runners.values():
    runner.warmup(warmup_steps)
  for _ in range(rounds):
    for name, runner in runners.items():
      start, cpu_start = time.perf_counter(), time.process_time()
      window = runner.run(max(1, steps // rounds))
      elapsed = time.perf_counter() - start
      out[name]['rounds'].append(window / elapsed)
      out[name]['steps'].append(window)
      out[name]['cpu_per_wall'].append((time.process_time() - cpu_start) / elapsed)
  for result in out.values():
    result['steps_per_s'] = statistics.median(result['rounds'])
  return out
