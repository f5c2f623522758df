"""The layers: normalizers, the dense layer they follow, and the recurrent cells built from both."""

from ln_jax.layers.batch_norm import BatchNorm
from ln_jax.layers.batch_renorm import BatchRenorm
from ln_jax.layers.batch_renorm import RenormSchedule
from ln_jax.layers.cells import CELLS
from ln_jax.layers.cells import NormSpec
from ln_jax.layers.cells import RECURRENT_NORMS
from ln_jax.layers.cells import RecurrentLayer
from ln_jax.layers.dense import Dense
from ln_jax.layers.group_norm import GroupNorm
from ln_jax.layers.layer_norm import LayerNorm
from ln_jax.layers.layer_norm import RMSNorm
from ln_jax.layers.rnn_cells import GRUCell
from ln_jax.layers.rnn_cells import LSTMCell
from ln_jax.layers.rnn_cells import SimpleRNNCell
from ln_jax.layers.rnn_cells import rnn_options
from ln_jax.layers.statistics import DEFAULT_EPSILON
from ln_jax.layers.statistics import centered_moments
from ln_jax.layers.statistics import moments
from ln_jax.layers.weight_norm import WeightNormDense
