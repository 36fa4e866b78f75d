"""Frozen earlier stages, turning a batch into a later stage's input inside its jitted step.

Stage 2 refines the stage-1 albedo (AlbedoNet at half resolution, upsampled ×2); stage 3 is conditioned on
the refined albedo. Without a finished run to start from, each falls back to the ground-truth albedo: stage 2
on a degraded copy (area-downsampled ×2, upsampled by RefinementNet itself), stage 3 on the albedo as is.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from maginet_jax import losses
from maginet_jax.models.albedo_net import build_albedo_net
from maginet_jax.models.layers import resize_to
from maginet_jax.models.refinement_net import build_refinement_net
from maginet_jax.training import runs


def _albedo_model(config, rngs):
    return build_albedo_net(config.model, rngs=rngs)


def _refine_model(config, rngs):
    return build_refinement_net(config.model, rngs=rngs)


class Upstream:
    """The frozen stage-1 (and, for stage 3, stage-2) networks given by `config.init`.

    `params` is a pytree for the step's replicated `frozen` argument; the methods take it back. `label`
    names the settings in error messages ("init.{}_workdir" in training, "--{}_workdir" in prediction).
    """

    def __init__(self, init_config, mesh: Mesh, *, refine: bool, label: str = "init.{}_workdir"):
        self.params, self._graphdefs, self.configs = {}, {}, {}
        wanted = [("albedo", init_config.albedo_workdir, _albedo_model)]
        if refine:
            wanted.append(("refine", init_config.refine_workdir, _refine_model))
        for stage, workdir, build in wanted:
            if workdir:
                config, graphdef, params = runs.load_model_params(
                    workdir, stage=stage, what=label.format(stage), mesh=mesh, build=build)
                self.configs[stage], self._graphdefs[stage], self.params[stage] = config, graphdef, params

    def describe(self) -> str:
        """What the next stage is given, in words (for the log)."""
        if "refine" in self.params:
            source = "stage-1 AlbedoNet" if "albedo" in self.params else "degraded ground-truth albedo"
            return f"RefinementNet on the {source}"
        return "stage-1 AlbedoNet" if "albedo" in self.params else "ground-truth albedo"

    def coarse_albedo(self, params, batch) -> jax.Array:
        """Stage 1's albedo at half the batch's resolution."""
        if "albedo" in params:
            net = nnx.merge(self._graphdefs["albedo"], params["albedo"])
            return jax.lax.stop_gradient(net(losses.area_downsample(batch["image"], 2))[0])
        return losses.area_downsample(batch["albedo"], 2)

    def refined_albedo(self, params, batch) -> jax.Array:
        """Stage 2's albedo at the batch's resolution (stage 3's condition)."""
        if "refine" in params:
            net = nnx.merge(self._graphdefs["refine"], params["refine"])
            return jax.lax.stop_gradient(net(self.coarse_albedo(params, batch), batch["image"]))
        if "albedo" in params:
            return resize_to(self.coarse_albedo(params, batch), *batch["image"].shape[1:3])
        return batch["albedo"]
