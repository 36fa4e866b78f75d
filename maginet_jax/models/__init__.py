"""Model definitions (Flax NNX, NHWC)."""
