"""The training loop and what it writes: the train step, the fused loop, optimizers, the run
directory (config, metrics, events), orbax checkpoints, resume, progress and data parallelism."""
