"""The PyTorch twin of maginet_jax: every network (AlbedoNet, RefinementNet, pix2pixHD's generators and
discriminators, the frozen perceptual networks), the losses and each stage's train step, mirroring the JAX code
layer by layer (NCHW), with the JAX weights copied in by `transfer`. tests/test_torch_twin.py proves the two
compute the same numbers; benchmarks/compare.py times them against each other."""
