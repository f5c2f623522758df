"""XLA's count of a training step's work with its loops unrolled: FLOPs, bytes and kernels.

XLA's cost analysis counts a loop's body once, whatever its trip count: a recurrent step run
in `lax.scan` (DRAW's glimpses, forward and backward) comes out T times too small. So the step is
traced to a jaxpr, every `scan` in it is marked fully unrolled (its jaxprs too, recursively), and
that straight-line program is compiled and analysed. 'kernels' counts the operations of the
compiled program's entry computation that would each be a kernel launch on an accelerator
(fusions, dots, copies, ...; not parameters, constants, tuples or bitcasts).
"""

from __future__ import annotations

import re

import jax
from jax.extend import core as jax_core

from ln_jax.training import step as step_lib
from benchmarks import roofline

# Entry-computation operations that launch nothing (names as in XLA's HLO text).
_NOT_KERNELS = ('parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast')
_OPERATION = re.compile(r'=\s*\S+\s+([\w-]+)\(')


def _unrolled(jaxpr):
  eqns = []
  for eqn in jaxpr.eqns:
    params = {name: _unrolled_param(value) for name, value in eqn.params.items()}
    if eqn.primitive.name == 'scan':
      params['unroll'] = params['length']
    eqns.append(eqn.replace(params=params))
  return jaxpr.replace(eqns=eqns)


def _unrolled_param(value):
  if isinstance(value, jax_core.ClosedJaxpr):
    return value.replace(jaxpr=_unrolled(value.jaxpr))
  if isinstance(value, jax_core.Jaxpr):
    return _unrolled(value)
  if type(value) is tuple:  # branches; not NamedTuples (a PRNG implementation is one)
    return tuple(_unrolled_param(v) for v in value)
  return value


def kernel_count(hlo_text: str) -> int:
  """Operations of the entry computation of an optimized HLO module that launch a kernel."""
  entry = hlo_text[hlo_text.index('\nENTRY'):]
  entry = entry[:entry.index('\n}')]
  return sum(1 for m in _OPERATION.finditer(entry) if m.group(1) not in _NOT_KERNELS)


def unrolled_cost(fn, *args) -> dict:
  """{'flops', 'bytes', 'kernels'} of `fn(*args)` compiled with every scan unrolled."""
  closed = jax.make_jaxpr(fn)(*args)
  straight = jax_core.jaxpr_as_fun(closed.replace(jaxpr=_unrolled(closed.jaxpr)))
  compiled = jax.jit(straight).lower(*jax.tree.leaves(args)).compile()
  analysis = roofline.cost_analysis(compiled)
  return {'flops': float(analysis['flops']), 'bytes': float(analysis['bytes accessed']),
          'kernels': kernel_count(compiled.as_text())}


def train_step_cost(state, batch) -> dict:
  """`unrolled_cost` of one `step.train_step(state, batch)`."""
  return unrolled_cost(step_lib.train_step, state, batch)
