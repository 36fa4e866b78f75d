"""Relighting: the renderer reproduces the synthetic data's own images, the SH environment and material edits
behave as the shading model says, --match recovers known lighting, the sweep, bad input as one line with nothing
written, and the interactive page's WebGL shader against the Python renderer in headless Chromium."""

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from data_pipeline import shading, synthetic
from maginet_jax import image_io, relighting
from maginet_jax.errors import UserError

SIZE = 48


@pytest.fixture(scope="module")
def sample():
    return synthetic.generate(0, 5, SIZE, split="test")


@pytest.fixture(scope="module")
def stem(sample, tmp_path_factory):
    """The sample's passes written as predict writes them (8-bit PNGs, 16-bit normal)."""
    stem = str(tmp_path_factory.mktemp("passes") / "face")
    for name in relighting.PASSES:
        image_io.write_png(f"{stem}_{name}.png", sample[name], bits=16 if name == "normal" else 8)
    return stem


def _copy_passes(stem: str, directory, name: str = "face") -> str:
    """The stem's passes copied into `directory` as `<name>_<pass>.png`; the new stem."""
    for p in relighting.PASSES:
        shutil.copy(f"{stem}_{p}.png", directory / f"{name}_{p}.png")
    return str(directory / name)


def _files(root) -> dict:
    """Every file under `root` and its bytes: what a refused command must leave as it found it."""
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def _rig_of(lights: shading.Lights, **kwargs) -> relighting.Rig:
    """The Rig of the data's lights: directions as (azimuth, elevation), unused lights dropped."""
    rig_lights = tuple((math.degrees(math.atan2(d[0], d[2])), math.degrees(math.asin(d[1])), *c)
                       for d, c in zip(lights.directions.tolist(), lights.colors.tolist()) if max(c) > 0)
    return relighting.Rig(lights=rig_lights, ambient=tuple(lights.ambient.tolist()),
                       shininess=float(lights.shininess), scatter=tuple(lights.scatter.tolist()), **kwargs)


def test_ground_truth_passes_under_their_own_lights_give_the_image(sample):
    lights = shading.lights_from_array(sample["lights"])
    got = relighting.render({k: sample[k] for k in relighting.PASSES}, _rig_of(lights))
    assert np.abs(got - sample["image"]).max() < 2e-5
    assert sample["image"].mean() > 0.05  # a lit face, not two black images


def test_no_light_is_black_and_a_constant_environment_is_albedo_times_ao(sample):
    passes = {k: sample[k] for k in relighting.PASSES}
    assert not relighting.render(passes, relighting.Rig(ambient=(0.0, 0.0, 0.0))).any()
    constant = np.array([0.5, 0.6, 0.7])
    got = relighting.render(passes, relighting.Rig(ambient=(0.0, 0.0, 0.0), sh=shading.sh_of_constant(constant)))
    np.testing.assert_allclose(got, passes["albedo"] * passes["ambient_occlusion"] * constant, atol=1e-6)


def test_sh_of_a_light_approximates_its_cosine_lobe():
    # The order-2 SH of max(n.l, 0) has its known error: at most ~0.094 (at n = -l) for a unit light.
    rng = np.random.default_rng(0)
    n = rng.normal(size=(2000, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    l_dir = relighting.direction(30, 40)
    approx = shading.sh_irradiance(n[:, None, None, :], shading.sh_of_light(l_dir, (1.0, 1.0, 1.0)))[:, 0, 0, 0]
    exact = np.maximum(n @ l_dir, 0.0)
    assert np.abs(approx - exact).max() < 0.1 and np.abs(approx - exact).mean() < 0.04


def test_material_edits(sample):
    passes = {k: sample[k] for k in relighting.PASSES}
    grey = shading.edit_materials(passes, saturation=0.0)["albedo"]
    assert np.abs(grey - grey[..., :1]).max() < 1e-6  # no saturation: R = G = B
    edited = shading.edit_materials(passes, tint=(1.0, 0.5, 0.0), specular_scale=2.0, translucency_scale=0.5,
                                    ao_strength=0.0)
    np.testing.assert_allclose(edited["albedo"], passes["albedo"] * [1.0, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(edited["specular"], 2 * passes["specular"])
    np.testing.assert_allclose(edited["translucency"], 0.5 * passes["translucency"])
    assert (edited["ambient_occlusion"] == 1).all()
    neutral = relighting.Rig(lights=((10, 10, 1, 1, 1),))
    brighter = relighting.render(passes, relighting.Rig(lights=neutral.lights, specular_scale=3.0))
    assert (brighter >= relighting.render(passes, neutral) - 1e-6).all()


def _known_environment():
    return shading.sh_of_constant((0.35, 0.3, 0.25)) + shading.sh_of_light(relighting.direction(-40, 25), (0.5, 0.4, 0.3))


def test_match_recovers_known_lighting(sample):
    passes = {k: sample[k] for k in relighting.PASSES}
    sh = _known_environment()
    image = relighting.render(passes, relighting.Rig(ambient=(0, 0, 0), sh=tuple(map(tuple, sh))))
    assert 0 < image.max() < 1  # no clipping: the diffuse model is exact here
    got = shading.estimate_sh(passes, image, sample["mask"])
    assert np.abs(got - sh).max() < 1e-3


def test_command_line_match_and_sweep(sample, stem, tmp_path):
    """--match from a 16-bit reference PNG writes coefficients --sh reads back; --sweep N writes N frames."""
    sh = _known_environment()
    passes = relighting.read_passes(stem)
    assert np.array_equal(np.round(passes["normal"] * 65535), np.round(sample["normal"] * 65535))  # 16 bits kept
    reference = relighting.render(passes, relighting.Rig(ambient=(0, 0, 0), sh=tuple(map(tuple, sh))))
    image_io.write_png(tmp_path / "reference.png", reference, bits=16)
    out = tmp_path / "out"
    relighting.relight(stem, str(out), relighting.Rig(ambient=(0, 0, 0)), sweep=5, match=str(tmp_path / "reference.png"))
    assert np.abs(np.loadtxt(out / "face_sh.txt") - sh).max() < 1e-3
    assert np.abs(image_io.read_image(str(out / "face_relit.png")) - reference).max() <= 0.5 / 255 + 1e-3
    with Image.open(out / "face_sweep.gif") as gif:
        assert gif.n_frames == 5
    assert Image.open(out / "face_sweep.png").size == (5 * SIZE, SIZE)
    assert sorted(os.listdir(out)) == ["face_relit.png", "face_sh.txt", "face_sweep.gif", "face_sweep.png"]


def test_sweep_moves_the_light(sample):
    frames = np.asarray(relighting.render_batch({k: sample[k] for k in relighting.PASSES},
                                             relighting.sweep_rigs(relighting.Rig(ambient=(0, 0, 0)), 4)))
    assert frames.shape == (4, SIZE, SIZE, 3)
    assert min(np.abs(frames[i] - frames[(i + 1) % 4]).mean() for i in range(4)) > 0.01


def test_directory_of_stems(stem, tmp_path):
    src = tmp_path / "passes"
    src.mkdir()
    for other in ("a", "b"):
        _copy_passes(stem, src, other)
    (tmp_path / "out" / "b_relit.png").mkdir(parents=True)  # wrote a_relit.png, then failed on it with a traceback
    with pytest.raises(UserError, match=r"^cannot write '.*out/b_relit.png': it is a directory$"):
        relighting.relight(str(src), str(tmp_path / "out"), relighting.Rig())
    assert os.listdir(tmp_path / "out") == ["b_relit.png"]
    (tmp_path / "out" / "b_relit.png").rmdir()
    relighting.relight(str(src), str(tmp_path / "out"), relighting.Rig())
    assert sorted(os.listdir(tmp_path / "out")) == ["a_relit.png", "b_relit.png"]


@pytest.mark.parametrize("case", ["missing", "sizes", "light", "truncated"])
def test_bad_input_is_one_line_and_writes_nothing(stem, tmp_path, case):
    src = tmp_path / "passes"
    src.mkdir()
    for name in relighting.PASSES:
        shutil.copy(f"{stem}_{name}.png", src / f"good_{name}.png")
        if not (case == "missing" and name == "specular"):
            shutil.copy(f"{stem}_{name}.png", src / f"bad_{name}.png")
    if case == "sizes":
        Image.new("L", (SIZE, SIZE + 2)).save(src / "bad_translucency.png")
    if case == "truncated":  # the last stem, and its header is whole: found before "bad" and "good" are written
        for name in relighting.PASSES:
            shutil.copy(f"{stem}_{name}.png", src / f"z_{name}.png")
        with open(src / "z_normal.png", "r+b") as f:
            f.truncate(200)
    light = "30,20,1,1" if case == "light" else "30,20,1,1,1"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "maginet_jax.relight", f"--passes={src}", f"--output={out}",
                        f"--light={light}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    expected = {"missing": r"missing pass 'specular': .*bad_specular.png' does not exist",
                "sizes": r"passes of '.*bad' differ in size: .*translucency 48x50",
                "light": r"--light=.30,20,1,1.: expected 5 comma-separated numbers within ±1e\+06 \(colours >= 0\)",
                "truncated": r"cannot read '.*z_normal.png': .*"}[case]
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stdout == "", r.stderr
    assert re.fullmatch(r"maginet_jax\.relight: error: " + expected + "\n", r.stderr), r.stderr
    assert not out.exists()


@pytest.mark.parametrize("flag,make,message", [
    ("--output", "file", r"--output='.*target' is a file: give a directory"),
    ("--html", "directory", r"--html='.*target' is a directory: give a file name"),
    ("--html", "under_a_file", r"--html='.*target/page.html' cannot be made: '.*target' is a file"),
], ids=["output-file", "html-directory", "html-under-a-file"])
def test_a_target_of_the_wrong_kind_is_one_line(stem, tmp_path, flag, make, message):
    """Checked before anything is written: an --html that could not be written used to be found after the relit
    image was, and was a traceback."""
    target = tmp_path / "target"
    target.mkdir() if make == "directory" else target.write_text("keep")
    where = target / "page.html" if make == "under_a_file" else target
    out = tmp_path / "out"
    args = [f"--output={out}", f"{flag}={where}"] if flag == "--html" else [f"--output={where}"]
    r = subprocess.run([sys.executable, "-m", "maginet_jax.relight", f"--passes={stem}", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and re.fullmatch(r"maginet_jax\.relight: error: " + message + "\n", r.stderr), r.stderr
    assert not out.exists() and (target.is_dir() or target.read_text() == "keep")


@pytest.mark.parametrize("text,message", [
    ("1 2 3\n4 5 6\n", r"holds 2x3 numbers, not 9 rows of R G B"),
    ("", r"holds no numbers, not 9 rows of R G B"),
    ("1 1 1\n" * 8 + "1 nan 1\n", r"holds nan: expected finite numbers within ±1e\+06"),
    ("1 1 1\n" * 8 + "1 1e300 1\n", r"holds 1e\+300: expected finite numbers within ±1e\+06"),
], ids=["2x3", "empty", "nan", "huge"])
def test_bad_sh_file(tmp_path, text, message):
    """The error says what is wrong (a NaN was "9x3 numbers, not 9 rows") and is all that is printed (numpy's
    warning of an empty file came on a line before it)."""
    (tmp_path / "sh.txt").write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError, match=message):
            relighting.read_sh(str(tmp_path / "sh.txt"))


def test_unknown_sh_preset():
    with pytest.raises(UserError, match=r"neither a preset .* nor a file"):
        relighting.read_sh("sunrise")


@pytest.mark.parametrize("case", ["html-over-a-pass", "html-over-an-output", "output-over-match", "html-over-sh",
                                  "html-hard-linked-to-a-pass"])
def test_a_file_to_write_that_is_one_read_is_refused(stem, tmp_path, case):
    """By resolved path or inode, before anything is written: --html=<a pass> used to replace the pass with the
    page; so did an --html hard-linked to a pass (writing truncates through the link)."""
    (tmp_path / "passes").mkdir()
    face = _copy_passes(stem, tmp_path / "passes")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(f"{face}_albedo.png", out / "face_relit.png")  # a relit image of an earlier run
    (tmp_path / "sh.txt").write_text("0.1 0.1 0.1\n" * 9)
    (tmp_path / "link.html").symlink_to(f"{face}_albedo.png")
    os.link(f"{face}_normal.png", tmp_path / "hard.html")
    kwargs, message = {
        "html-over-a-pass": (dict(html=str(tmp_path / "link.html")), r"--html='.*link.html' would overwrite the "
                             r"input '.*passes/face_albedo.png': write elsewhere"),
        "html-over-an-output": (dict(html=str(out / "face_relit.png")), r"--html='.*out/face_relit.png' would "
                                r"overwrite the output '.*out/face_relit.png': write elsewhere"),
        "output-over-match": (dict(match=str(tmp_path / "out" / ".." / "out" / "face_relit.png")),
                              r"--output='.*out' would overwrite the input '.*out/../out/face_relit.png': write "
                              r"elsewhere"),
        "html-over-sh": (dict(html=str(tmp_path / "sh.txt"), also_read=(str(tmp_path / "sh.txt"),)),
                         r"--html='.*sh.txt' would overwrite the input '.*sh.txt': write elsewhere"),
        "html-hard-linked-to-a-pass": (dict(html=str(tmp_path / "hard.html")), r"--html='.*hard.html' would "
                                       r"overwrite the input '.*passes/face_normal.png': write elsewhere"),
    }[case]
    before = _files(tmp_path)
    with pytest.raises(UserError, match=message):
        relighting.relight(face, str(out), relighting.Rig(), **kwargs)
    assert _files(tmp_path) == before


def test_a_sweep_too_large_for_memory_is_refused_before_writing(stem, tmp_path, monkeypatch):
    """--sweep=1000000 used to write the relit image, then run out of memory (~49 GB) rendering the frames."""
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"--sweep=361: expected 0 to 360 frames of 48x48 \(at most 360; "):
        relighting.relight(stem, str(out), relighting.Rig(), sweep=361)
    monkeypatch.setattr(relighting, "MAX_SWEEP_PIXELS", 10 * SIZE * SIZE)
    with pytest.raises(UserError, match=r"--sweep=11: expected 0 to 10 frames of 48x48"):
        relighting.relight(stem, str(out), relighting.Rig(), sweep=11)
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--light=0,0,1e300,1,1"], r"--light='0,0,1e300,1,1': expected 5 comma-separated numbers within ±1e\+06 "
                                r"\(colours >= 0\)"),
    (["--sh=studio", "--sh_intensity=1e300"], r"--sh_intensity=1e\+300: expected a number from 0 to 1e\+06"),
    (["--sh={tmp}/sh.txt", "--html={tmp}/sh.txt"], r"--html='.*sh.txt' would overwrite the input '.*sh.txt': "
                                                   r"write elsewhere"),
    (["--match={stem}_albedo.png", "--sh=studio", "--sh_intensity=2"],  # were ignored without a word
     r"--match fits the environment itself: give it without --sh and --sh_intensity"),
], ids=["light", "sh-intensity", "html-over-sh-file", "match-and-sh"])
def test_bad_flags_are_one_line_and_write_nothing(stem, tmp_path, args, message):
    """Lights and intensities that float32 cannot render (they exited 0 with NaN pixels written as black), and an
    --sh file the page would have replaced."""
    (tmp_path / "sh.txt").write_text("0.1 0.1 0.1\n" * 9)
    before = _files(tmp_path)
    r = subprocess.run([sys.executable, "-m", "maginet_jax.relight", f"--passes={stem}", f"--output={tmp_path}/out",
                        *(arg.format(tmp=tmp_path, stem=stem) for arg in args)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and re.fullmatch(r"maginet_jax\.relight: error: " + message + "\n", r.stderr), r.stderr
    assert _files(tmp_path) == before


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian package `chromium`; "
                    ".ci/run installs it)")
def test_page_renders_what_python_renders(stem, tmp_path):
    """The page's WebGL shader, run by headless Chromium on the CPU (SwiftShader), against relighting.render."""
    passes = relighting.read_passes(stem)
    page = tmp_path / "page.html"
    relighting.relight(stem, "", relighting.Rig(), html=str(page))
    rig = relighting.Rig(lights=((40, 30, 0.8, 0.7, 0.6), (-60, -10, 0.3, 0.3, 0.5)), ambient=(0.05, 0.06, 0.07),
                      sh=tuple(map(tuple, relighting.PRESETS["sunset"])), sh_intensity=0.7, tint=(1.0, 0.9, 0.8),
                      saturation=1.3, specular_scale=1.5, shininess=40.0, translucency_scale=2.5, ao_strength=1.4,
                      scatter=(0.9, 0.5, 0.4))  # every term large enough that a wrong equation shows
    fragment = urllib.parse.urlencode({"state": json.dumps(rig.as_state()), "readback": 1})
    r = subprocess.run([_chromium(), "--headless=new", "--no-sandbox", "--use-angle=swiftshader",
                        "--enable-unsafe-swiftshader", "--virtual-time-budget=10000", "--dump-dom",
                        f"{page.as_uri()}#{fragment}"], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="readback">([^<]*)</pre>', r.stdout)
    assert found and found.group(1) and not found.group(1).startswith("error"), r.stdout[-2000:] + r.stderr[-2000:]
    rgba = np.frombuffer(base64.b64decode(found.group(1)), np.uint8).reshape(SIZE, SIZE, 4)
    got = rgba[::-1, :, :3].astype(int)  # readPixels rows run bottom-up
    want = np.round(relighting.render(passes, rig) * 255).astype(int)
    assert want.mean() > 20 and want.std() > 5  # a lit, varied face
    close = (np.abs(got - want) <= 2).all(axis=-1)
    assert close.mean() >= 0.99, f"{close.mean():.4f} of pixels within 2/255; max error {np.abs(got - want).max()}"
