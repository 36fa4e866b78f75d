"""Training: state, step, sharding, checkpoints, logging."""
