"""Implementation modules of momentum_jax; import from the package instead."""
