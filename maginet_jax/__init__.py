"""MAGINet in JAX/Flax NNX."""
