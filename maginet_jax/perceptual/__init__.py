"""Frozen ImageNet networks (AlexNet, VGG16, VGG19) and the perceptual metrics built on them."""
