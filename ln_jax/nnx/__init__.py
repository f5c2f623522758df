"""ln_jax's normalizers and recurrent cells as Flax NNX modules, computing with the same functions
as the Linen layers.

`LayerNorm`, `RMSNorm`, `BatchNorm`, `GroupNorm` take flax.nnx's arguments (`num_features`
first, keyword-only options, `rngs`) and store flax.nnx's variables (`nnx.Param` scale/bias of
`num_features` entries; BatchNorm's `nnx.BatchStat` mean/var), so an nnx.state of a model built
with flax.nnx's layers loads into the same model built with these (`nnx.update`). `BatchRenorm`
(running mean/std and a step counter) and `WeightNormLinear` have no flax.nnx twin.

Where they differ from flax.nnx (as ln_jax's Linen layers differ from flax.linen):
- `epsilon` defaults to 1e-5 (flax 1e-6 for LayerNorm/RMSNorm/GroupNorm; BatchNorm's is 1e-5);
- `use_fast_variance` defaults to False, the two-pass variance, exact at large means in float32;
- `dtype=None` keeps the input's dtype (flax promotes it with the parameters' dtype); the
  statistics are float32 or wider either way, and there is no `promote_dtype` argument;
- masked-out NaN/inf entries output the bias (flax: NaN), so gradients stay finite;
- RMSNorm has an optional bias (`use_bias`, off by default);
- BatchNorm adds `unbiased_variance` and `ghost_batches`, and accepts a tuple `axis`
  (`num_features` is then the product of those axes' sizes); the running averages update on
  every call with batch statistics (as flax.nnx's);
- GroupNorm defaults to 8 groups (flax 32) and its `reduction_axes` are the axes the
  statistics span besides the last one (default none; flax's list all of them, the last
  included, and default to all but the first): (-3, -2) for [B, H, W, C] is flax's default;
- no `*_metadata` arguments (sharding annotations).
Bad arguments raise a ValueError naming them: an input whose feature axes do not hold
`num_features` entries, a `mask` that does not broadcast to the input, `use_running_average`
unset both at construction and at the call.

`LSTMCell`, `GRUCell` and `SimpleRNNCell` are the step-wise recurrent cells of
`ln_jax.layers.rnn_cells` for `nnx.RNN` (plain, layer-normalized as in the paper, LN of the
LSTM's cell state only, group norm, recurrent BN or batch renorm with per-time-step statistics);
`ln_jax.nnx.cells` lists their arguments and their differences from flax.nnx's cells.
"""

from ln_jax.nnx.batch import BatchNorm
from ln_jax.nnx.batch import BatchRenorm
from ln_jax.nnx.cells import GRUCell
from ln_jax.nnx.cells import LSTMCell
from ln_jax.nnx.cells import SimpleRNNCell
from ln_jax.nnx.normalizers import GroupNorm
from ln_jax.nnx.normalizers import LayerNorm
from ln_jax.nnx.normalizers import RMSNorm
from ln_jax.nnx.normalizers import WeightNormLinear

__all__ = ['BatchNorm', 'BatchRenorm', 'GroupNorm', 'GRUCell', 'LayerNorm', 'LSTMCell', 'RMSNorm',
           'SimpleRNNCell', 'WeightNormLinear']
