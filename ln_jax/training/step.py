"""The pure, compiled pieces of training: one step, K fused steps, and a split's evaluation.

`train_step(state, batch) -> (state, metrics)` serves every task and every normalizer: the task
(`state.task`) turns the model's outputs into per-example metrics, and BatchNorm's running
averages come back through the loss function's aux output (an empty collection for the others).
`train_steps` fuses `num_steps` steps into one `lax.scan`, gathering each batch on the device
from a seeded order, so the step index alone fixes the data order and the results do not depend
on how steps are grouped into calls. `vmapped_*` run the same functions for several seeds at once
over a state with a leading seed axis.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np

from ln_jax.training import parallel
from ln_jax.training import window as window_lib

_EVAL_STREAM = 0x6576616C  # folded into the run's key for evaluation-time random draws


class TrainState(train_state.TrainState):
  batch_stats: Any = flax.core.FrozenDict()
  key: Any = None  # the run's PRNG key, for tasks whose models draw random numbers
  task: Any = flax.struct.field(pytree_node=False, default=None)
  # Static: leave the state as it was after a step whose loss or gradients are not finite
  # (config.on_nonfinite='skip'); off, the step costs nothing extra.
  skip_nonfinite: bool = flax.struct.field(pytree_node=False, default=False)


def create_train_state(config, task, model, tx, init_key, run_key, example_batch) -> TrainState:
  """The state of a new run: the model initialised on `example_batch` (one example)."""
  inputs = task.model_inputs(example_batch)
  rngs = {'params': init_key, **{name: init_key for name in task.rngs}}
  # Compiled once as a whole: run op by op, every initializer would compile on its own.
  variables = jax.jit(functools.partial(model.init, train=False))(rngs, inputs)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', flax.core.FrozenDict()),
                           key=run_key, task=task,
                           skip_nonfinite=config.on_nonfinite == 'skip')


def variables(state, params=None) -> dict:
  out = {'params': state.params if params is None else params}
  if state.batch_stats:
    out['batch_stats'] = state.batch_stats
  return out


def _rngs(state, key):
  if not state.task.rngs:
    return None
  return {name: jax.random.fold_in(key, i) for i, name in enumerate(state.task.rngs)}


def per_example_metrics(state, batch, *, train: bool, key=None, params=None):
  """(the task's per-example metrics {name: [B]}, the mutated collections) on `batch`."""
  task = state.task
  outputs = state.apply_fn(variables(state, params), task.model_inputs(batch), train=train,
                           mutable=['batch_stats'] if train else False,
                           rngs=_rngs(state, key) if key is not None else None)
  outputs, updates = outputs if train else (outputs, {})
  return task.loss(outputs, batch), updates


def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch`: the mean of the task's 'loss' over the batch is minimized.

  Metrics: the batch mean of each task metric, and 'nonfinite' (1 when the loss was not
  finite). With `state.skip_nonfinite`, a step with a non-finite loss or gradient changes nothing
  but the step count, reports 0 for every metric and counts as 'nonfinite'.
  """
  key = jax.random.fold_in(state.key, state.step) if state.task.rngs else None

  def loss_fn(params):
    metrics, updates = per_example_metrics(state, batch, train=True, key=key, params=params)
    means = {name: jnp.mean(value) for name, value in metrics.items()}
    return means['loss'], (means, updates)

  (loss, (means, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=updates.get('batch_stats', state.batch_stats))
  finite = jnp.isfinite(loss)
  if state.skip_nonfinite:
    finite &= _all_finite(grads)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = new_state.replace(params=keep(new_state.params, state.params),
                                  opt_state=keep(new_state.opt_state, state.opt_state),
                                  batch_stats=keep(new_state.batch_stats, state.batch_stats))
    means = {name: jnp.where(finite, value, 0.0) for name, value in means.items()}
  return new_state, {**means, 'nonfinite': (~finite).astype(jnp.int32)}


def epoch_order(data_key, epoch, num_examples: int):
  """The seeded order in which epoch `epoch` visits the training set."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def has_convolution(state, batch) -> bool:
  """Whether a training step on `batch` runs a convolution (traced, not run).

  XLA:CPU runs a convolution inside a loop (`lax.scan`) about 8x slower than outside one (the
  conv net's step at batch 128: 1.96 s in a scan of one step, 0.25 s jitted alone, measured on 2
  cores), so on the CPU the loop runs such a model one unrolled step per call (unrolling several
  steps into one program lets XLA fuse across them, and the numbers would then depend on how
  many; one step per call keeps them independent of `steps_per_call`) and unrolls evaluation.
  """
  def primitives(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn.primitive.name
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (list, tuple)) else [param]):
          inner = getattr(sub, 'jaxpr', None)
          if inner is not None:
            yield from primitives(getattr(inner, 'jaxpr', inner))
  traced = jax.make_jaxpr(train_step)(state, batch)
  return any(name.startswith('conv_general') for name in primitives(traced.jaxpr))


def _train_steps(state, data, order, position, window, *, num_steps: int, batch_size: int,
                 mesh=None, unroll: bool = False):
  def body(carry, i):
    state, window = carry
    if order is None:  # streamed from the host: data holds this call's batches [K, B, ...]
      batch = jax.tree.map(lambda a: parallel.shard_batch(a[i], mesh), data)
    else:
      idx = jax.lax.dynamic_slice_in_dim(order, (position + i) * batch_size, batch_size)
      idx = parallel.shard_batch(idx, mesh)
      batch = jax.tree.map(lambda a: a[idx], data)
    state, metrics = train_step(state, batch)
    state = parallel.keep_replicated(state, mesh)
    metrics['first_nonfinite'] = jnp.where(metrics['nonfinite'] > 0, state.step,
                                           window_lib.NO_NONFINITE).astype(jnp.int32)
    return (state, window_lib.accumulate(window, metrics)), None

  if unroll:  # straight-line code (a scan of one step still compiles to a loop)
    carry = (state, window)
    for i in range(num_steps):
      carry, _ = body(carry, jnp.asarray(i))
    return carry
  (state, window), _ = jax.lax.scan(body, (state, window), jnp.arange(num_steps))
  return state, window


_STATIC = ('num_steps', 'batch_size', 'mesh', 'unroll')


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnums=(0,))
def train_steps(state, data, order, position, window, *, num_steps: int, batch_size: int,
                mesh=None, unroll: bool = False):
  """`num_steps` optimizer steps, batch i taken from `order` at (position + i) * batch_size of
  the training arrays `data` (or, with `order` None, `data` holds the batches [K, B, ...]).

  Returns the new state and `window` with the metrics of `train_step` added one step at a time,
  plus 'first_nonfinite': the step count after the first step with a non-finite loss, or
  window.NO_NONFINITE. Adding in step order inside the scan keeps the float sums, not only the
  state, independent of how the steps are grouped into calls. With a `mesh` (see `parallel`)
  each batch is split over its devices. `unroll` unrolls the steps (see `has_convolution`).
  """
  return _train_steps(state, data, order, position, window, num_steps=num_steps,
                      batch_size=batch_size, mesh=mesh, unroll=unroll)


@functools.partial(jax.jit, static_argnames=_STATIC + ('shared_data',), donate_argnums=(0,))
def vmapped_train_steps(states, data, orders, position, windows, *, num_steps: int,
                        batch_size: int, mesh=None, unroll: bool = False,
                        shared_data: bool = True):
  """`train_steps` for every seed at once: states, orders and windows have a leading seed axis,
  and so does `data` unless `shared_data` (the seeds train on the same arrays)."""
  steps = functools.partial(_train_steps, num_steps=num_steps, batch_size=batch_size, mesh=mesh,
                            unroll=unroll)
  data_axis = None if shared_data and orders is not None else 0
  return jax.vmap(lambda s, d, o, w: steps(s, d, o, position, w),
                  in_axes=(0, data_axis, 0 if orders is not None else None, 0))(
                      states, data, orders, windows)


def _evaluate(state, data, *, batch_size: int, mesh=None, unroll: bool = False):
  n = jax.tree.leaves(data)[0].shape[0]
  num_batches = -(-n // batch_size)
  idx = jnp.arange(num_batches * batch_size)
  weights = (idx < n).astype(jnp.float32).reshape(num_batches, batch_size)
  idx = (idx % n).reshape(num_batches, batch_size)
  names = state.task.metric_names
  eval_key = (jax.random.fold_in(state.key, _EVAL_STREAM) if state.task.rngs else None)

  def body(totals, xs):
    batch_idx, batch_weights, b = xs
    batch_idx = parallel.shard_batch(batch_idx, mesh)
    batch = jax.tree.map(lambda a: a[batch_idx], data)
    key = None if eval_key is None else jax.random.fold_in(eval_key, b)
    metrics, _ = per_example_metrics(state, batch, train=False, key=key)
    return {name: totals[name] + jnp.sum(metrics[name] * batch_weights) for name in names}, None

  zeros = {name: jnp.zeros((), jnp.float32) for name in names}
  if unroll:  # straight-line code, as in `_train_steps`
    totals = zeros
    for b in range(num_batches):
      totals, _ = body(totals, (idx[b], weights[b], jnp.asarray(b)))
  else:
    totals, _ = jax.lax.scan(body, zeros, (idx, weights, jnp.arange(num_batches)))
  return {name: total / n for name, total in totals.items()}


@functools.partial(jax.jit, static_argnames=('batch_size', 'mesh', 'unroll'))
def evaluate(state, data, *, batch_size: int, mesh=None, unroll: bool = False):
  """The mean of every task metric over a whole split, in compiled batches (the last one wraps
  around and its repeated examples are masked out of the means); `unroll` as `train_steps`."""
  return _evaluate(state, data, batch_size=batch_size, mesh=mesh, unroll=unroll)


@functools.partial(jax.jit, static_argnames=('batch_size', 'mesh', 'unroll', 'shared_data'))
def vmapped_evaluate(states, data, *, batch_size: int, mesh=None, unroll: bool = False,
                     shared_data: bool = True):
  return jax.vmap(functools.partial(_evaluate, batch_size=batch_size, mesh=mesh, unroll=unroll),
                  in_axes=(0, None if shared_data else 0))(states, data)


def stack(trees):
  """One pytree with a leading axis from equal-structured ones (host arrays, no compilation)."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
