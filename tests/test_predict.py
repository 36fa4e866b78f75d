"""Prediction: any input size maps back to the input's size, unit 16-bit normals, the contact sheet, and bad
input (non-image, empty directory, a run of the wrong stage) as one error line."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from maginet_jax import image_io, predict
from maginet_jax.stages import supervised

PASSES = ("ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse")


def read_png16(path):
    """Decodes the 16-bit PNGs we write (one IDAT, filter type 0 on every row) independently of our writer."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body, crc = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n], data[pos + 8 + n:pos + 12 + n]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks[tag] = body
        pos += 12 + n
    w, h, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 16 and color == 2
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * 6)
    assert not rows[:, 0].any()
    return rows[:, 1:].copy().view(">u2").reshape(h, w, 3).astype(np.uint16)


@pytest.fixture(scope="module")
def odd_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "face.png"
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((45, 61, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def predicted(chain, odd_image, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    skipped = predict.predict(chain["albedo"], chain["refine"], chain["passes"], odd_image, out)
    return out, skipped


def test_outputs_have_the_input_size(predicted):
    out, skipped = predicted
    assert skipped == []
    expected = {f"face_{n}.png" for n in ("albedo", "sheet", *PASSES)}
    assert set(os.listdir(out)) == expected
    for name in ("albedo", *PASSES):
        with Image.open(os.path.join(out, f"face_{name}.png")) as im:
            assert im.size == (61, 45), name
            assert im.mode == ("RGB" if name in ("albedo", "normal", "raw_diffuse") else "L"), name


def test_normals_are_16_bit_unit_vectors(predicted):
    path = os.path.join(predicted[0], "face_normal.png")
    codes = read_png16(path)
    with Image.open(path) as im:  # Pillow reads 16-bit RGB as its high bytes: an independent check of the file
        np.testing.assert_array_equal(np.asarray(im), (codes >> 8).astype(np.uint8))
    n = codes.astype(np.float64) / 65535.0 * 2.0 - 1.0
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)
    assert len(np.unique(codes.reshape(-1, 3), axis=0)) > 100  # a real prediction, not a constant


def test_native_size_and_sheet(chain, odd_image, tmp_path):
    predict.predict(chain["albedo"], chain["refine"], chain["passes"], odd_image, str(tmp_path), native=True)
    with Image.open(tmp_path / "face_specular.png") as im:
        assert im.size == (32, 32)  # the passes run's crop size
    with Image.open(tmp_path / "face_sheet.png") as im:
        assert im.size == (4 * 256, 2 * (256 + 16))  # input, albedo and 5 passes, 4 per row, labelled


def test_prediction_matches_the_chained_networks(chain, tmp_path):
    """At the working size, predict's albedo is RefinementNet(AlbedoNet(image / 2)) as stage 3 trained on."""
    p = predict.Predictor(chain["albedo"], chain["refine"], chain["passes"])
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    out = p(image)
    import jax
    from flax import nnx
    from maginet_jax.losses import area_downsample
    from maginet_jax.training import runs, sharding
    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    nets = {stage: runs.load_params(chain[stage], supervised.networks, stage=stage, what=stage, mesh=mesh)[1:]
            for stage in ("albedo", "refine")}
    run = {stage: nnx.merge(graphdefs["model"], params["model"]) for stage, (graphdefs, params) in nets.items()}
    coarse = run["albedo"](area_downsample(image[None], 2))[0]
    want = np.asarray(run["refine"](coarse, image[None])[0])
    np.testing.assert_allclose(out["albedo"], np.clip(want, 0, 1), atol=1e-5)


def test_a_run_s_earlier_checkpoint_by_step(chain):
    """--<run>_step picks a kept checkpoint (e.g. keep_best_checkpoints'); the chain's runs keep steps 6 and 12."""
    import jax
    from maginet_jax.errors import UserError
    from maginet_jax.training import runs, sharding
    steps = {"albedo": 6, "refine": 6, "passes": 6}
    p = predict.Predictor(chain["albedo"], chain["refine"], chain["passes"], steps=steps)
    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    for stage, (networks, name) in {"albedo": (supervised.networks, "model"), "refine": (supervised.networks, "model"),
                                    "passes": (predict.passes.networks, "generator")}.items():
        for step, same in ((6, True), (12, False)):
            saved = runs.load_params(chain[stage], networks, stage=stage, what=stage, mesh=mesh, step=step,
                                     names=(name,))[2][name]
            used = p._params["generator"] if stage == "passes" else p._frozen_nets["upstream"][stage][1]
            equal = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(used)))
            assert equal == same, (stage, step)
    with pytest.raises(UserError, match=f"^--passes_workdir='{chain['passes']}' has no checkpoint of step 5 "
                                        r"\(it has 6, 12\)$"):
        predict.Predictor(chain["albedo"], chain["refine"], chain["passes"], steps={"passes": 5})
    with pytest.raises(UserError, match="^--joint_step=3 is set but --joint_workdir is empty$"):
        predict.Predictor(chain["albedo"], chain["refine"], chain["passes"], steps={"joint": 3})


def _predict_cli(dirs, *args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "maginet_jax.predict", f"--albedo_workdir={dirs['albedo']}",
           f"--refine_workdir={dirs['refine']}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_directory_with_a_bad_file(chain, odd_image, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(open(odd_image, "rb").read())
    (folder / "b.txt").write_text("not an image")
    r = _predict_cli(chain, f"--passes_workdir={chain['passes']}", f"--input={folder}",
                     f"--output={tmp_path / 'out'}")
    assert r.returncode == 1
    assert "skipped: cannot read" in r.stderr and "b.txt" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "maginet_jax.predict: error: 1 file(s) could not be read and were skipped")
    assert "a_normal.png" in os.listdir(tmp_path / "out")


def test_outputs_never_overwrite_an_input(chain, odd_image, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "a_normal.png"):  # a texture, and a normal map someone keeps beside it
        (folder / name).write_bytes(open(odd_image, "rb").read())
    before = (folder / "a_normal.png").read_bytes()
    r = _predict_cli(chain, f"--passes_workdir={chain['passes']}", f"--input={folder}", f"--output={folder}")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"maginet_jax.predict: error: --output {str(folder)!r} would overwrite the input "
        f"{str(folder / 'a_normal.png')!r}: write elsewhere"], r.stderr
    assert sorted(os.listdir(folder)) == ["a.png", "a_normal.png"] and (folder / "a_normal.png").read_bytes() == before


@pytest.mark.parametrize("case", ["hard-linked", "mask"])
def test_an_output_that_is_an_input_by_inode_or_the_mask_is_refused(chain, odd_image, tmp_path, case):
    """An output hard-linked to the input (writing truncates through the link), and a --mask that is an output,
    were written over."""
    from maginet_jax.errors import UserError
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    texture = tmp_path / "in" / "a.png"
    texture.write_bytes(open(odd_image, "rb").read())
    if case == "hard-linked":
        os.link(texture, tmp_path / "out" / "a_normal.png")
        mask, victim = "", texture
    else:
        victim = tmp_path / "out" / "a_albedo.png"
        victim.write_bytes(open(odd_image, "rb").read())
        mask = str(victim)
    before = victim.read_bytes()
    with pytest.raises(UserError, match=f"^--output '{tmp_path}/out' would overwrite the input '{victim}': "):
        predict.predict(chain["albedo"], chain["refine"], chain["passes"], str(texture), str(tmp_path / "out"),
                        mask=mask)
    assert victim.read_bytes() == before


def test_an_output_name_taken_by_a_directory_is_refused_before_writing(chain, odd_image, tmp_path):
    """Was IsADirectoryError, a traceback, after the outputs before it had been written."""
    from maginet_jax.errors import UserError
    (tmp_path / "out" / "a_normal.png").mkdir(parents=True)
    texture = tmp_path / "a.png"
    texture.write_bytes(open(odd_image, "rb").read())
    with pytest.raises(UserError, match=f"^cannot write '{tmp_path}/out/a_normal.png': it is a directory$"):
        predict.predict(chain["albedo"], chain["refine"], chain["passes"], str(texture), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["a_normal.png"]


@pytest.mark.parametrize("case,message", [
    ("empty", "holds no files"),
    ("text", "not an image Pillow can read"),
    ("wrong_stage", "--passes_workdir="),
    ("mask_and_no_mask", "--mask and --no_mask contradict"),
    ("missing_mask", "cannot read"),
    ("negative_size", "working size -32 must be in [1, 4096]"),
    ("huge_size", "working size 1000000000 must be in [1, 4096]"),  # was a MemoryError after creating --output
    ("thin", "is 9000×1: its longer side exceeds 8192 pixels"),  # padded to 9000², 1 GB (40000: 19 GB)
    ("output_is_file", "cannot write to --output="),  # said --workdir
])
def test_bad_input_is_one_line(chain, tmp_path, case, message):
    passes, source, extra = chain["passes"], tmp_path / "in", []
    if case == "empty":
        source.mkdir()
    else:
        source = tmp_path / "x.png"
        source.write_text("hello")
    if case != "empty" and case != "text":
        source.write_bytes(open(os.path.join(chain["passes"], "samples", "step_0000000.png"), "rb").read())
    if case == "wrong_stage":
        passes = chain["refine"]
    if case == "mask_and_no_mask":
        extra = [f"--mask={source}", "--no_mask"]
    if case == "missing_mask":
        extra = [f"--mask={tmp_path / 'nowhere.png'}"]
    if case == "negative_size":  # -32 % 8 == 0: it passed the multiple check
        extra = ["--size=-32"]
    if case == "huge_size":
        extra = ["--size=1000000000"]
    if case == "thin":
        image_io.write_png(str(source), np.full((1, 9000, 1), 0.5, np.float32))
    output = tmp_path / "out"
    if case == "output_is_file":
        output = tmp_path / "a_file"
        output.write_text("keep me")
    r = _predict_cli(chain, f"--passes_workdir={passes}", f"--input={source}", f"--output={output}", *extra)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maginet_jax.predict: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()  # nothing written
    assert case != "output_is_file" or output.read_text() == "keep me"


def test_a_directory_of_unreadable_files_leaves_no_output(chain, tmp_path):
    """Every file skipped: the --output directory that predict made for them is removed again."""
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.png"):
        (tmp_path / "in" / name).write_text("not an image")
    skipped = predict.predict(chain["albedo"], "", chain["passes"], str(tmp_path / "in"), str(tmp_path / "out"))
    assert len(skipped) == 2 and not (tmp_path / "out").exists()


def _framed_texture(size=(40, 48), border=6, seed=4) -> np.ndarray:
    """A random texture inside a black frame, like a UV map's background."""
    image = np.zeros((*size, 3), np.float32)
    image[border:-border, border:-border] = np.random.default_rng(seed).uniform(0.1, 1.0, (size[0] - 2 * border,
                                                                                             size[1] - 2 * border, 3))
    return image


def test_outputs_are_masked_by_the_texture(chain, tmp_path):
    """Default: every pass is 0 on the black frame and, inside, equal to the raw (--no_mask) output."""
    image = _framed_texture()
    source = tmp_path / "uv.png"
    image_io.write_png(str(source), image)
    image = image_io.read_image(str(source))
    for args, out in (({}, "masked"), ({"no_mask": True}, "raw")):
        predict.predict(chain["albedo"], chain["refine"], chain["passes"], str(source), str(tmp_path / out), **args)
    inside = image_io.texture_mask(image)[..., 0] > 0
    assert inside.sum() == 28 * 36
    for name in ("albedo", *PASSES):
        masked = image_io.read_image(str(tmp_path / "masked" / f"uv_{name}.png"))
        raw = image_io.read_image(str(tmp_path / "raw" / f"uv_{name}.png"))
        assert not masked[~inside].any(), name
        assert raw[~inside].max() > 0, name  # the networks do write something there
        np.testing.assert_array_equal(masked[inside], raw[inside], err_msg=name)


def test_mask_file_resized_to_each_input(chain, tmp_path):
    """--mask: one mask image of another size; its dark half blanks the outputs, also at the native size."""
    rng = np.random.default_rng(5)
    source = tmp_path / "face.png"
    image_io.write_png(str(source), rng.uniform(0.1, 1.0, (40, 40, 3)))
    mask = np.zeros((20, 20, 1), np.float32)
    mask[:, :10] = 1.0  # the left half is valid
    image_io.write_png(str(tmp_path / "mask.png"), mask)
    p = predict.Predictor(chain["albedo"], chain["refine"], chain["passes"])
    for native, side in ((False, 40), (True, 32)):
        out = p(image_io.read_image(str(source)), native, predict.fit_mask(mask, 40, 40))
        for name, x in out.items():
            assert x.shape[:2] == (side, side), name
            assert not x[:, side // 2:].any() and x[:, :side // 2].any(), (name, native)


def test_texture_mask_is_the_non_black_pixels():
    """Black up to 2/255 (a black background's rounding noise) is outside; predict and relight --match share it."""
    image = np.zeros((1, 5, 3), np.float32)
    image[0, :, 1] = [0, 1 / 255, 2 / 255, 3 / 255, 1]
    assert image_io.texture_mask(image)[0, :, 0].tolist() == [0, 0, 0, 1, 1]


def test_missing_flags_are_one_line():
    r = subprocess.run([sys.executable, "-m", "maginet_jax.predict"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("maginet_jax.predict: error: flag --input=None") and "--output=None" in r.stderr
