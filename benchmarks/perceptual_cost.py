r"""Added cost per train step of the VGG-perceptual and patch-LPIPS terms (stages 1 and 2).

    python benchmarks/perceptual_cost.py [--config=configs/albedo.py:demo] [--steps=10] [--variants=...]

Times the stage's jitted, sharded train step (exactly as `python -m maginet_jax.train` runs it; compiled and
warmed up first) with the base terms, then with each perceptual term added, then both, on one fixed synthetic
batch; prints ms/step.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import albedo  # noqa: E402
from data_pipeline import loader  # noqa: E402
from maginet_jax import train  # noqa: E402
from maginet_jax.errors import UserError  # noqa: E402
from maginet_jax.training import sharding  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per variant.", lower_bound=1)
VARIANTS = {"base": (False, False), "vgg": (True, False), "lpips": (False, True), "both": (True, True)}
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Which to time, of {list(VARIANTS)}.")


def time_variant(c, batch, mesh, vgg: float, lpips: float) -> float:
    """Mean seconds per train step with the given perceptual weights."""
    c = c.copy_and_resolve_references()
    c.losses.vgg, c.losses.lpips = vgg, lpips
    stage = train.STAGES[c.stage]
    graphdefs, state = stage.init(c, mesh)
    frozen_nets = jax.device_put(stage.frozen_nets(c, mesh), sharding.replicated(mesh))
    step = train.jit_train_step(c, graphdefs, mesh, jax.tree.map(lambda x: x.sharding, state))
    for _ in range(2):  # compile + warm-up
        state, m = step(state, batch, frozen_nets)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(_STEPS.value):
        state, m = step(state, batch, frozen_nets)
    jax.block_until_ready((state, m))
    return (time.perf_counter() - t) / _STEPS.value


def main(argv):
    if len(argv) > 1:
        sys.exit(f"perceptual_cost.py: error: unexpected arguments {argv[1:]}")
    c = train.CONFIG.value or albedo.get_config("demo")  # train's --config flag, stage 1 or 2
    if c.stage not in ("albedo", "refine"):
        sys.exit(f"perceptual_cost.py: error: the perceptual terms are weighed on stage 1 or 2, not {c.stage!r}")
    # Each once: the "added" column is against the base row, which a second one would replace.
    if not _VARIANTS.value or not set(_VARIANTS.value) <= set(VARIANTS) or len(set(_VARIANTS.value)) < len(
            _VARIANTS.value):
        sys.exit(f"perceptual_cost.py: error: --variants must be some of {list(VARIANTS)}, each once, got "
                 f"{_VARIANTS.value}")
    try:
        train.validate(c)
        mesh = sharding.make_mesh(c.mesh)
        src = loader.make_source(c.data, "train", c.batch_size, ("albedo",))
    except UserError as e:
        sys.exit(f"perceptual_cost.py: error: {e}")
    batch = next(iter(loader.make_loader(src, batch_size=c.batch_size, crop_size=c.data.crop_size, train=True,
                                         seed=0)))
    batch = sharding.to_global(batch, mesh)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"stage {c.stage}, batch {c.batch_size} x {c.data.crop_size}², widths {tuple(c.model.widths)}, "
          f"vgg {c.perceptual.vgg_backbone}, lpips {c.perceptual.lpips_net} {c.perceptual.num_patches}x"
          f"{c.perceptual.patch_size}² patches/image")
    w_vgg, w_lp = c.losses.vgg or 1.0, c.losses.lpips or 1.0
    names = {"base": "base terms", "vgg": "+ vgg", "lpips": "+ patch-lpips", "both": "+ vgg + patch-lpips"}
    rows = [(names[v], time_variant(c, batch, mesh, w_vgg * VARIANTS[v][0], w_lp * VARIANTS[v][1]))
            for v in _VARIANTS.value]
    base = dict(rows).get("base terms")
    print(f"{'terms':<22}{'ms/step':>10}{'added ms':>10}")
    for name, sec in rows:
        added = f"{(sec - base) * 1e3:>10.1f}" if base is not None else f"{'-':>10}"
        print(f"{name:<22}{sec * 1e3:>10.1f}{added}")

if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: train.parse_flags(argv, prog="perceptual_cost.py"))
