"""`python -m maginet_jax.tools.import_pix2pixhd`: PyTorch pix2pixHD weights → a passes run's starting point.

The end-to-end check: a passes run started from the import computes exactly what the PyTorch modules compute.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.torch_twin import pix2pixhd as ref
from conftest import REPO, smoke
from maginet_jax.tools import import_pix2pixhd

ARCH = ["--ngf", "4", "--n_downsample_global", "2", "--n_blocks_global", "1", "--n_local_enhancers", "1",
        "--n_blocks_local", "1", "--ndf", "4", "--n_layers_D", "2", "--num_D", "2"]


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
    """A local-enhancer G and an intermediate-feature D in the passes :smoke shapes, saved like pix2pixHD."""
    root = tmp_path_factory.mktemp("torch")
    g = ref.randomize_(ref.LocalEnhancer(3, 9, ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1,
                                         n_blocks_local=1), seed=1)
    d = ref.randomize_(ref.MultiscaleDiscriminator(12, ndf=4, n_layers=2, num_D=2, getIntermFeat=True), seed=2)
    torch.save(g.state_dict(), root / "G.pth")
    torch.save(d.state_dict(), root / "D.pth")
    return root, g.eval(), d.eval()


def test_passes_run_starts_from_the_import(torch_files, tmp_path):
    root, g, d = torch_files
    out = str(tmp_path / "imported")
    import_pix2pixhd.main(["--generator", str(root / "G.pth"), "--discriminator", str(root / "D.pth"),
                           "--netG", "local", "--out", out, *ARCH])
    from maginet_jax.stages import passes
    from maginet_jax.training import sharding
    c = smoke("passes", **{"model.netG": "local", "init.pix2pixhd": out})
    graphdefs, state = passes.init(c, sharding.make_mesh(c.mesh))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        g_want = g(x).numpy().transpose(0, 2, 3, 1)
        d_want = [[t.numpy().transpose(0, 2, 3, 1) for t in scale]
                  for scale in d(torch.cat([x, torch.from_numpy(g_want.transpose(0, 3, 1, 2))], 1))]
    run = jax.jit(lambda name, params, x: nnx.merge(graphdefs[name], params)(x), static_argnums=0)
    with jax.default_matmul_precision("highest"):
        x = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
        g_got = run("generator", state.params["generator"], x)
        d_got = run("discriminator", state.params["discriminator"], jnp.concatenate([x, g_want], -1))
    np.testing.assert_allclose(np.asarray(g_got), g_want, atol=1e-4)
    for got_scale, want_scale in zip(d_got, d_want, strict=True):
        for got, want in zip(got_scale, want_scale, strict=True):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_import_of_another_architecture_is_refused_by_the_passes_run(torch_files, tmp_path):
    from maginet_jax.errors import UserError
    from maginet_jax.stages import passes
    out = str(tmp_path / "imported")
    import_pix2pixhd.main(["--generator", str(torch_files[0] / "G.pth"), "--netG", "local", "--out", out, *ARCH])
    c = smoke("passes", **{"init.pix2pixhd": out})  # :smoke is netG=global
    with pytest.raises(UserError, match="another architecture: model.netG: 'local' there, 'global' here"):
        passes.validate(c)


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "maginet_jax.tools.import_pix2pixhd", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wrong_architecture_is_one_line_and_writes_nothing(torch_files, tmp_path):
    out = tmp_path / "imported"
    r = _cli("--generator", str(torch_files[0] / "G.pth"), "--netG", "global", "--out", str(out), *ARCH)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "maginet_jax.tools.import_pix2pixhd: error: state dict does not fit GlobalGenerator")
    assert "unexpected keys ['model1_1.1.bias'" in lines[0]
    assert not out.exists()


def _main_error(*args) -> str:
    """import_pix2pixhd.main's error line for `args` (the architecture of `torch_files`' weights unless given)."""
    with pytest.raises(SystemExit) as e:
        import_pix2pixhd.main([*ARCH, "--netG", "local", *args])
    return str(e.value)


@pytest.mark.parametrize("case,message", [("not_torch", "is not a PyTorch state-dict file"),
                                          ("missing", "missing.pth' does not exist: give a PyTorch state-dict file"),
                                          ("directory", "G.pth' is a directory: give a PyTorch state-dict file"),
                                          ("complex", "G.pth': model.1.weight holds complex numbers"),
                                          ("existing_out", "already exists and is not an empty directory"),
                                          ("out_is_a_file", "already exists and is not an empty directory"),
                                          ("empty_out", "--out is empty"),
                                          ("out_under_a_file", "cannot write to --out")])
def test_bad_files(torch_files, tmp_path, case, message):
    generator, out = torch_files[0] / "G.pth", tmp_path / "imported"
    if case in ("not_torch", "missing", "directory", "complex"):
        generator = tmp_path / ("missing.pth" if case == "missing" else "G.pth")
        if case == "not_torch":
            generator.write_text("hello")
        if case == "directory":
            generator.mkdir()
        if case == "complex":  # torch.Tensor.float() of it only warns that it drops the imaginary parts
            torch.save({"model.1.weight": torch.ones(2, 2, dtype=torch.complex64)}, generator)
    else:
        generator = tmp_path / "missing.pth"  # --out is checked before any weights are read
        (tmp_path / "mine.txt").write_text("mine")
        out = {"existing_out": out, "out_is_a_file": tmp_path / "mine.txt", "empty_out": "",
               "out_under_a_file": tmp_path / "mine.txt" / "imported"}[case]
        if case == "existing_out":
            out.mkdir()
            (out / "keep.txt").write_text("mine")
    error = _main_error("--generator", str(generator), "--out", str(out))
    assert error.startswith("maginet_jax.tools.import_pix2pixhd: error: ") and message in error
    if case not in ("not_torch", "missing", "directory", "complex"):
        made = {"mine.txt", "imported"} if case == "existing_out" else {"mine.txt"}
        assert {p.name for p in tmp_path.iterdir()} == made  # nothing written, no probe left
        assert (tmp_path / "mine.txt").read_text() == "mine"
    if case == "existing_out":
        assert os.listdir(out) == ["keep.txt"]


@pytest.mark.parametrize("flag,value,message", [("--ngf", "-4", "--ngf must be an integer >= 1, got -4"),
                                                ("--ndf", "0", "--ndf must be an integer >= 1"),
                                                ("--n_downsample_global", "-1", "--n_downsample_global must be"),
                                                ("--n_blocks_local", "-1", "--n_blocks_local must be"),
                                                ("--n_local_enhancers", "0", "--n_local_enhancers must be"),
                                                ("--n_layers_D", "-1", "--n_layers_D must be"),
                                                ("--num_D", "0", "--num_D must be"),
                                                ("--output_nc", "0", "--output_nc must be")])
def test_bad_architecture_is_refused_before_reading(tmp_path, flag, value, message):
    """Even the discriminator's options, without --discriminator: they are written into config.json."""
    out = tmp_path / "imported"
    error = _main_error("--generator", str(tmp_path / "missing.pth"), "--out", str(out), flag, value)
    assert error.startswith(f"maginet_jax.tools.import_pix2pixhd: error: {message}")
    assert not out.exists()


@pytest.mark.parametrize("which,bad", [("generator", float("nan")), ("discriminator", float("inf"))])
def test_non_finite_weights_are_refused(torch_files, tmp_path, which, bad):
    root, g, d = torch_files
    state = (g if which == "generator" else d).state_dict()
    key = list(state)[2]
    state[key] = state[key].clone()
    state[key].view(-1)[-1] = bad
    torch.save(state, tmp_path / "bad.pth")
    files = {"generator": root / "G.pth", "discriminator": root / "D.pth", which: tmp_path / "bad.pth"}
    out = tmp_path / "imported"
    error = _main_error("--generator", str(files["generator"]), "--discriminator", str(files["discriminator"]),
                        "--out", str(out))
    assert error.endswith(f"bad.pth': {key} holds NaN or infinite values")
    assert not out.exists()
