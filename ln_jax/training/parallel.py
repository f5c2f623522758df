"""Data parallelism with `jax.sharding`: a 1-D mesh of devices with the batch split along it.

Parameters, optimizer state and the dataset are replicated on every device; inside the compiled
step each batch is constrained to be split along the mesh's 'batch' axis. XLA's SPMD partitioner
then inserts the cross-device sums itself, so the gradients and BatchNorm's batch statistics are
those of the whole (global) batch: the same run as on one device, up to float rounding.
BatchNorm's `ghost_batches` option (config `norm_options.ghost_batches`) gives per-device statistics
instead, when set to the number of devices.

Multi-host: start the same command on every host with `--distributed` (scripts/train.py), which
calls `jax.distributed.initialize()` before anything else touches JAX. JAX finds the coordinator
address, process count and process id in the cluster environment (Slurm, Open MPI, Kubernetes,
Cloud TPU); elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0, read by JAX) and
JAX_NUM_PROCESSES and JAX_PROCESS_ID (read here) on every process.
`jax.devices()` then lists the devices of every host, and the mesh spans them all; each process
loads the same dataset with the same seed and contributes its own devices' shards. Every process
computes everything (a collective left out by one process would stall the others); process 0
alone writes the run files (`is_primary`). Any check that can fail on one process only runs inside
`together`, so that all of them stop, not just that one.
"""

from __future__ import annotations

import contextlib
import os
import zlib

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

from ln_jax.errors import UserError

BATCH_AXIS = 'batch'


def initialize_distributed() -> None:
  """Joins the multi-process job the environment describes (once per process)."""
  if not jax.distributed.is_initialized():
    explicit = {key: int(os.environ[var]) for key, var in (('num_processes', 'JAX_NUM_PROCESSES'),
                                                           ('process_id', 'JAX_PROCESS_ID'))
                if os.environ.get(var, '').strip().isdigit()}
    try:
      jax.distributed.initialize(**explicit)
    except (ValueError, RuntimeError) as e:
      raise UserError(f'cannot join a multi-process job ({str(e).rstrip(".")}); run under a '
                      'cluster manager or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and '
                      'JAX_PROCESS_ID') from None
  logging.info('process %d of %d; %d local and %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
  """Whether this process writes the run's files: process 0, the only one in most runs."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process has reached the `sync` with this `name` (no-op in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _gather(code: int) -> list[int]:
  """Every process's `code` (an int32), in process order; also a barrier."""
  return [int(c) for c in multihost_utils.process_allgather(np.int32(code))]


@contextlib.contextmanager
def together(what: str):
  """Makes an exception in the block stop every process, not only the one that raised it.

  Alone, the others would go on to the next collective and wait there until JAX's shutdown
  barrier times out minutes later. The process that failed re-raises its own error; the others
  raise a UserError naming it. `what` says what the block does, for that message.
  """
  if jax.process_count() == 1:
    yield
    return
  try:
    yield
  except Exception:
    _gather(1)
    raise
  failed = [i for i, code in enumerate(_gather(0)) if code]
  if failed:
    raise UserError(f'process {failed[0]} of {jax.process_count()} failed {what}; its error '
                    'line says why')


def check_same(value, message: str) -> None:
  """Raises UserError(`message`) on every process unless all of them hold the same `value`
  (compared by a checksum of its repr)."""
  if jax.process_count() > 1:
    if len(set(_gather(zlib.crc32(repr(value).encode()) & 0x7fffffff))) > 1:
      raise UserError(message)


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0: all of them, on every host)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise UserError(f'num_devices={num_devices} but {len(devices)} device(s) are available; '
                    f'choose 1..{len(devices)}, or 0 for all')
  if jax.process_count() > 1 and num_devices not in (0, len(devices)):
    raise UserError(f'num_devices={num_devices} in a multi-process run; use 0 (all '
                    f'{len(devices)} devices)')
  devices = devices[:num_devices or len(devices)]
  # Auto axes: the partitioner propagates the batch split through the model by itself.
  return Mesh(np.asarray(devices), (BATCH_AXIS,), axis_types=(AxisType.Auto,))


def check_divisible(batch_size: int, mesh: Mesh, key: str = 'batch_size') -> None:
  if batch_size % mesh.size:
    raise UserError(f'{key}={batch_size} cannot be split evenly over {mesh.size} devices; '
                    f'use a multiple of {mesh.size} or set num_devices')


def round_up(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that is >= `batch_size`."""
  return -(-batch_size // mesh.size) * mesh.size


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicate(tree, mesh: Mesh):
  """Places every array of `tree` whole on every device of `mesh`.

  Built from per-device callbacks, so it also works when the mesh spans other hosts' devices.
  """
  sharding = replicated(mesh)

  def place(x):
    x = np.asarray(x if hasattr(x, 'dtype') else jnp.asarray(x))  # Python scalars: JAX's dtype
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, tree)


def shard_batch(x, mesh: Mesh | None):
  """Inside `jit`: splits `x` along its leading (batch) axis over the mesh (no-op without one)."""
  if mesh is None or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, batch_sharded(mesh))


def keep_replicated(tree, mesh: Mesh | None):
  """Inside `jit`: keeps `tree` (e.g. the train state) whole on every device."""
  if mesh is None or mesh.size == 1:
    return tree
  return jax.lax.with_sharding_constraint(tree, replicated(mesh))
