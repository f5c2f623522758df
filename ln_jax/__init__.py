"""ln_jax: layer normalization and its relatives as Flax modules, with the experiments of
"Layer Normalization" (Ba, Kiros & Hinton, 2016).

The layers drop into any `flax.linen` model:

  import ln_jax
  h = ln_jax.LayerNorm()(nn.Dense(256, use_bias=False)(x))

The package is laid out by role: `layers` (normalizers, dense, recurrent cells) -> `models` (MLP,
recurrent classifier) -> `training` (train step, loop, run directory, checkpoints, resume) ->
`sweeps` (experiment files, the sweep runner) -> `analysis` (compare, plots, Table 1);
`benchmarks` times them. scripts/ holds the command-line entry points.
"""

from ln_jax.layers import BatchNorm
from ln_jax.layers import BatchRenorm
from ln_jax.layers import Dense
from ln_jax.layers import GroupNorm
from ln_jax.layers import GRUCell
from ln_jax.layers import LayerNorm
from ln_jax.layers import LSTMCell
from ln_jax.layers import NormSpec
from ln_jax.layers import RecurrentLayer
from ln_jax.layers import RMSNorm
from ln_jax.layers import rnn_options
from ln_jax.layers import SimpleRNNCell
from ln_jax.layers import WeightNormDense

__version__ = '0.2.0'
