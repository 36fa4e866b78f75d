"""The XLA compile options of the jitted steps (`config.xla_cpu_ynn_fusions`, maginet_jax/training/compiler.py)."""

import functools

import jax
import jax.numpy as jnp
import pytest

from conftest import synthetic_batch
from maginet_jax import train
from maginet_jax.errors import UserError
from maginet_jax.stages import supervised
from maginet_jax.training import compiler, sharding


def test_values_map_to_xla_option():
    assert compiler.ynn_options("xla_default") == {}
    assert compiler.ynn_options("none") == {compiler.YNN_OPTION: ""}
    assert compiler.ynn_options("reduce") == {compiler.YNN_OPTION: "LIBRARY_FUSION_TYPE_REDUCE"}
    assert compiler.ynn_options("individual_dot, reduce") == {
        compiler.YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    for bad in ("", "conv", "reduce,", "None"):
        with pytest.raises(UserError, match="xla_cpu_ynn_fusions"):
            compiler.ynn_options(bad)


def _conv_gradient_program(options) -> str:
    """XLA:CPU's compiled program for a convolution's kernel gradient large enough for YNNPACK to take."""
    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y) ** 2)
    args = jnp.ones((3, 3, 32, 32)), jnp.ones((4, 128, 128, 32))
    return jax.jit(jax.grad(loss), compiler_options=options).lower(*args).compile().as_text()


def test_the_default_keeps_convolutions_from_ynnpack(smoke_config):
    # What the setting is for: XLA's default hands this convolution to YNNPACK; the project's does not (nor
    # anything else in this program), and a CPU gets the option while other backends would not.
    assert "__ynn_fusion" in _conv_gradient_program(None)
    assert smoke_config.xla_cpu_ynn_fusions == compiler.DEFAULT == "reduce"
    options = compiler.options(smoke_config)
    assert options == {compiler.YNN_OPTION: "LIBRARY_FUSION_TYPE_REDUCE"}
    assert "__ynn_fusion" not in _conv_gradient_program(options)
    smoke_config.xla_cpu_ynn_fusions = "xla_default"
    assert compiler.options(smoke_config) == {}


def _stage_one(config):
    """(mesh, graphdefs, state, frozen networks) of the stage-1 smoke config on one device."""
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    graphdefs, state = supervised.init(config, mesh)
    return mesh, graphdefs, state, jax.device_put(supervised.frozen_nets(config, mesh), sharding.replicated(mesh))


def test_the_train_step_is_compiled_with_the_options(smoke_config, monkeypatch):
    mesh, graphdefs, state, frozen = _stage_one(smoke_config)
    batch = sharding.to_global(synthetic_batch(resolution=smoke_config.data.crop_size), mesh)
    bogus = {"xla_cpu_no_such_option_in_any_xla": True}  # compiling with it fails, naming it
    monkeypatch.setattr(compiler, "options", lambda config: bogus)
    step = train.jit_train_step(smoke_config, graphdefs, mesh, jax.tree.map(lambda x: x.sharding, state))
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_no_such_option_in_any_xla"):
        step.lower(state, batch, frozen).compile()


def test_an_option_this_xla_lacks_is_left_out(smoke_config, monkeypatch):
    # A jax whose XLA renamed or dropped the experimental option compiles without it instead of failing.
    monkeypatch.setattr(compiler, "YNN_OPTION", "xla_cpu_no_such_option_in_any_xla")
    assert compiler.options(smoke_config) == {}


def test_the_evaluator_is_compiled_with_the_options(smoke_config, monkeypatch):
    # The training loop's held-out evaluation runs the same networks: the same setting, not XLA's default.
    from maginet_jax import evaluator

    mesh, graphdefs, state, frozen = _stage_one(smoke_config)
    predict = functools.partial(supervised.predict, config=smoke_config, graphdefs=graphdefs)
    monkeypatch.setattr(compiler, "options", lambda config: {"xla_cpu_no_such_option_in_any_xla": True})
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_no_such_option_in_any_xla"):
        evaluator.evaluate(predict, state.params, frozen, smoke_config, mesh)
