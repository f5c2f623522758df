"""Speed-only paths: hand-written gradients and fused computations that replace autodiff of the
reference layers in `ln_jax.layers` where they measured faster, each tested against them
(tests/test_lstm_kernel.py, test_dense.py, test_fused_norms.py, test_fused_steps.py).

- `lstm_kernel`: the LSTM's forward and backward pass over a whole sequence (plain, LN, BN).
- `projection`: the recurrent input projection with its kernel gradient transposing the input.
- `fused_matmul`: x @ w whose small-batch weight gradient fuses into the optimizer's passes.
- `fused_norms`: closed-form LN and RMS backward passes (benchmarked, not used by default).
"""
