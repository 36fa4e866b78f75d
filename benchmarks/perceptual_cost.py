r"""Added cost per train step of the VGG-perceptual and patch-LPIPS terms (stage 1).

    python benchmarks/perceptual_cost.py [--config=configs/albedo.py:demo] [--steps=10]

Times the jitted, sharded train step (compiled and warmed up first) with the base terms (mse, edge, side),
then with each perceptual term added, then both, on one fixed synthetic batch; prints ms/step.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from data_pipeline import loader, sources  # noqa: E402
from maginet_jax.models.albedo_net import build_albedo_net  # noqa: E402
from maginet_jax.training import optim, sharding, steps  # noqa: E402
from maginet_jax.training.objectives import AlbedoObjective  # noqa: E402
from maginet_jax.training.state import init_train_state  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/albedo.py:demo", "Stage config.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per variant.")


def time_variant(c, batch, mesh, vgg: float, lpips: float) -> float:
    """Mean seconds per train step with the given perceptual weights."""
    c = c.copy_and_resolve_references()
    c.losses.vgg, c.losses.lpips = vgg, lpips
    objective = AlbedoObjective(c.losses, c.perceptual)
    tx = optim.make_optimizer(c.optim, c.num_train_steps)
    graphdef, state = init_train_state(lambda r: build_albedo_net(c.model, rngs=r), tx, c.seed, mesh)
    step = steps.make_train_step(graphdef, objective, tx, optim.make_schedule(c.optim, c.num_train_steps), mesh,
                                 jax.tree.map(lambda x: x.sharding, state))
    batch = sharding.to_global(batch, mesh)
    for _ in range(2):  # compile + warm-up
        state, m = step(state, batch)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(_STEPS.value):
        state, m = step(state, batch)
    jax.block_until_ready((state, m))
    return (time.perf_counter() - t) / _STEPS.value


def main(argv):
    del argv
    c = _CONFIG.value
    mesh = sharding.make_mesh(c.mesh)
    src = sources.make_source(c.data, "train", c.batch_size, ("albedo",))
    batch = next(iter(loader.make_loader(src, batch_size=c.batch_size, crop_size=c.data.crop_size, train=True,
                                         seed=0)))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"batch {c.batch_size} x {c.data.crop_size}², widths {tuple(c.model.widths)}, vgg {c.perceptual.vgg_backbone}, "
          f"lpips {c.perceptual.lpips_net} {c.perceptual.num_patches}x{c.perceptual.patch_size}² patches/image")
    w_vgg, w_lp = c.losses.vgg or 1.0, c.losses.lpips or 1.0
    base = time_variant(c, batch, mesh, 0.0, 0.0)
    rows = [("mse + edge + side", base)]
    rows.append(("+ vgg", time_variant(c, batch, mesh, w_vgg, 0.0)))
    rows.append(("+ patch-lpips", time_variant(c, batch, mesh, 0.0, w_lp)))
    rows.append(("+ vgg + patch-lpips", time_variant(c, batch, mesh, w_vgg, w_lp)))
    print(f"{'terms':<22}{'ms/step':>10}{'added ms':>10}")
    for name, sec in rows:
        print(f"{name:<22}{sec * 1e3:>10.1f}{(sec - base) * 1e3:>10.1f}")


if __name__ == "__main__":
    app.run(main)
