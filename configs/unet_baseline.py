"""The U-Net baseline of the ablation: stage 1 with a plain U-Net in place of AlbedoNet.

Everything but the network is configs/albedo.py's (data, seeds, losses, optimizer, steps), except the deep
supervision term, which needs side outputs the U-Net does not have. Widths are chosen for about AlbedoNet's
parameter count: default 35.12M vs 35.10M; demo 554k vs 548k.

  python -m maginet_jax.train --config=configs/unet_baseline.py:demo --workdir=runs/unet_demo
  python -m maginet_jax.evaluate --config=configs/unet_baseline.py:demo --workdir=runs/unet_demo \
      --compare=runs/albedo_demo

Variants as configs/albedo.py: none (paper scale), demo, smoke.
"""

import importlib.util
import os

import ml_collections


def _albedo_config(arg: str) -> ml_collections.ConfigDict:
    # Loaded by path: config files are given to the CLIs as files, not imported as a package.
    spec = importlib.util.spec_from_file_location("_maginet_albedo_config",
                                                  os.path.join(os.path.dirname(os.path.abspath(__file__)), "albedo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the baseline config; `arg` picks the same variants as configs/albedo.py."""
    c = _albedo_config(arg)
    c.model.arch = "unet"
    c.model.widths = {"": (64, 128, 256, 512, 816), "demo": (16, 32, 64, 104), "smoke": (8, 16, 16)}[arg]
    c.losses.side = 0.0
    return c
