"""Sweeps: experiment files that enumerate members, and the runner that trains them."""
