"""Precise BatchNorm statistics (Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm").

Running averages lag the weights they describe: each is a momentum average over batches that
earlier weights produced. With `norm_options.eval_stats='population'` every evaluation instead
uses statistics of the current weights: a pass over `norm_options.population_batches` training
batches in
training mode (each batch normalized by its own statistics, as in a training step, so every BN
layer sees the inputs it sees in training), and for every BN layer (per time step for recurrent
BN) the mean and variance of its input over the union of those batches:

  mean = E_b[mean_b],   var = E_b[var_b] + E_b[(mean_b - mean)^2]

with biased per-batch variances and batches of equal size: exactly the statistics of all the
batches' inputs put together. The pass changes neither the parameters nor the running averages
in the training state (evaluation gets a copy with its `batch_stats` replaced), and its batches
are drawn from a stream of their own, so the training trajectory is that of a run without it.
The batches are a seeded draw without replacement for each evaluation step, a pure function of
(seed, step): a resumed run evaluates with the same statistics.

The batch statistics come from the model itself, built with momentum 0 so that one training-
mode call leaves exactly its batch's (mean, var) in `batch_stats`. Ghost batches of n examples
are population batches of n, normalized as in training; a batch's unbiased variance (the paper's
small-batch BN) is converted back to the biased one before combining.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp

from ln_jax import norms
from ln_jax.training import parallel

# Folded into the seed's key: the population batches never share a key with the data order.
_STREAM = 0x706F70


def applies(config) -> bool:
  """Whether evaluations of `config` use population statistics (BN only; others have none)."""
  return norms.uses_population(config)


def batch_size(config) -> int:
  """Examples per population batch: the batch BN normalizes over in training."""
  return config.batch_size // config.norm_options.ghost_batches


def statistics_model(config, task):
  """The model with momentum 0 and whole batches, so a training-mode call reports its batch."""
  config = config.copy_and_resolve_references()
  config.norm_options.momentum = 0.0
  config.norm_options.ghost_batches = 1
  return task.create_model(config)


def batch_indices(config, step: int, num_train: int, seed: int | None = None):
  """[population_batches, batch] training-set indices for the evaluation at `step` of the run
  with `seed` (default: config.seed)."""
  seed = config.seed if seed is None else seed
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _STREAM), step)
  size, count = batch_size(config), config.norm_options.population_batches
  return jax.random.permutation(key, num_train)[:count * size].reshape(count, size)


def combine(per_batch, batch_size_: int, unbiased: bool):
  """Population (mean, var) from stacked per-batch ones ({..., 'mean': [nb, ...], 'var': ...})."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(per_batch))
  combined = {}
  for path, mean_b in flat.items():
    if path[-1] != 'mean' or path[:-1] + ('var',) not in flat:
      continue
    var_b = flat[path[:-1] + ('var',)]
    if unbiased:
      var_b = var_b * (batch_size_ - 1.0) / batch_size_
    mean = jnp.mean(mean_b, 0)
    combined[path] = mean
    combined[path[:-1] + ('var',)] = jnp.mean(var_b, 0) + jnp.mean(jnp.square(mean_b - mean), 0)
  return combined


def _statistics(variables, data, indices, *, apply_fn, task, unbiased: bool, mesh=None):
  def body(_, batch_idx):
    batch_idx = parallel.shard_batch(batch_idx, mesh)
    batch = jax.tree.map(lambda a: a[batch_idx], data)
    rngs = {name: jax.random.PRNGKey(i) for i, name in enumerate(task.rngs)} or None
    _, updates = apply_fn(variables, task.model_inputs(batch), train=True,
                          mutable=['batch_stats'], rngs=rngs)
    return None, updates['batch_stats']

  _, per_batch = jax.lax.scan(body, None, indices)
  return combine(per_batch, indices.shape[1], unbiased)


_STATIC = ('apply_fn', 'task', 'unbiased', 'mesh')
_VMAP_STATIC = _STATIC + ('shared_data',)
statistics = jax.jit(_statistics, static_argnames=_STATIC)
statistics.__doc__ = """The population (mean, var) of every BN layer, as {path: array} of
`batch_stats` entries. `apply_fn` is `statistics_model(config, task).apply`; `indices`
[num_batches, batch] the training batches; `data` the training arrays."""


@functools.partial(jax.jit, static_argnames=_VMAP_STATIC)
def vmapped_statistics(variables, data, indices, *, apply_fn, task, unbiased: bool, mesh=None,
                       shared_data: bool = True):
  """`statistics` for every seed: `variables` and `indices` have a leading seed axis, and so
  does `data` unless `shared_data`."""
  return jax.vmap(functools.partial(_statistics, apply_fn=apply_fn, task=task,
                                    unbiased=unbiased, mesh=mesh),
                  in_axes=(0, None if shared_data else 0, 0))(variables, data, indices)


def evaluator(config, task, data, *, seeds=None, shared_data: bool = True, mesh=None):
  """`evaluation_state(state, step)`: `state` for the evaluation at `step`, with population
  statistics in its `batch_stats` where `applies` (else `state` itself). Build it once per run:
  it holds the statistics model, so every evaluation reuses one compiled pass. `seeds`: the
  seeds of a state with a leading seed axis (each seed draws its own batches), whose training
  arrays `data` are one for all (`shared_data`) or stacked per seed."""
  if not applies(config):
    return lambda state, step: state
  apply_fn = statistics_model(config, task).apply
  num_train = jax.tree.leaves(data)[0].shape[0 if seeds is None or shared_data else 1]

  def evaluation_state(state, step: int):
    kwargs = dict(apply_fn=apply_fn, task=task, unbiased=config.norm_options.unbiased_variance,
                  mesh=mesh)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    if seeds is None:
      indices = batch_indices(config, step, num_train)
      if mesh is not None:
        indices = parallel.replicate(indices, mesh)
      population = statistics(variables, data, indices, **kwargs)
    else:
      indices = jnp.stack([batch_indices(config, step, num_train, seed) for seed in seeds])
      if mesh is not None:
        indices = parallel.replicate(indices, mesh)
      population = vmapped_statistics(variables, data, indices, shared_data=shared_data,
                                      **kwargs)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.batch_stats))
    flat.update(population)
    batch_stats = flax.traverse_util.unflatten_dict(flat)
    if isinstance(state.batch_stats, flax.core.FrozenDict):
      batch_stats = flax.core.freeze(batch_stats)
    return state.replace(batch_stats=batch_stats)
  return evaluation_state

