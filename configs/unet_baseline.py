"""The U-Net baseline of the ablation: stage 1 with a plain U-Net in place of AlbedoNet.

Everything but the network is configs/albedo.py's (data, seeds, losses, optimizer, steps), except the deep
supervision term, which needs side outputs the U-Net does not have. Widths are chosen for about AlbedoNet's
parameter count: default 35.12M vs 35.10M; demo 554k vs 548k.

  python -m maginet_jax.train --config=configs/unet_baseline.py:demo --workdir=runs/unet_demo
  python -m maginet_jax.evaluate --workdir=runs/unet_demo --compare=runs/albedo_demo

Variants as configs/albedo.py: none (paper scale), demo, smoke.
"""

import ml_collections

from configs import albedo


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the baseline config; `arg` picks the same variants as configs/albedo.py."""
    c = albedo.get_config(arg)
    c.model.arch = "unet"
    c.model.widths = {"": (64, 128, 256, 512, 816), "demo": (16, 32, 64, 104), "smoke": (8, 16, 16)}[arg]
    c.losses.side = 0.0
    return c
