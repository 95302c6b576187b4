"""Weight import: MXNet .params, torchvision VGG-16, PSA/our .pth, and the errors."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch

from psa_core.errors import PsaError
from psa_core.io import save_torch
from psa_core.models import build_model, load_weights
from psa_core.models.weights import (
    NDARRAY_V3_MAGIC,
    mxnet_to_psa_name,
    read_mxnet_params,
    write_mxnet_params,
)

# -- MXNet format ----------------------------------------------------------------


def _small_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "arg:conv_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "aux:bn_moving_var": rng.random(4).astype(np.float64),
        "arg:half": rng.standard_normal((2, 5)).astype(np.float16),
        "arg:ints": np.arange(6, dtype=np.int64).reshape(2, 3),
        "arg:bytes": np.arange(7, dtype=np.uint8),
    }


@pytest.mark.parametrize("version", [0, 1, 2])
def test_mxnet_round_trip(tmp_path, version):
    arrays = _small_arrays()
    path = tmp_path / "small.params"
    write_mxnet_params(path, arrays, version=version)
    back = read_mxnet_params(path)
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype, name
        np.testing.assert_array_equal(back[name], array)


def test_mxnet_v2_byte_layout(tmp_path):
    """The bytes of a one-array file, spelled out from src/ndarray/ndarray.cc."""
    path = tmp_path / "one.params"
    write_mxnet_params(path, {"arg:w": np.array([[1.5, -2.0]], dtype=np.float32)})
    expected = (
        struct.pack("<QQQ", 0x112, 0, 1)  # list magic, reserved, one array
        + struct.pack("<Ii", 0xF993FAC9, 0)  # V2 magic, dense storage
        + struct.pack("<Iqq", 2, 1, 2)  # ndim, dims (int64)
        + struct.pack("<ii", 1, 0)  # context cpu(0)
        + struct.pack("<i", 0)  # dtype flag float32
        + struct.pack("<ff", 1.5, -2.0)
        + struct.pack("<Q", 1)  # one name
        + struct.pack("<Q", 5)
        + b"arg:w"
    )
    assert path.read_bytes() == expected


def test_mxnet_v3_and_empty_arrays(tmp_path):
    data = np.arange(3, dtype=np.float32)
    blob = (
        struct.pack("<QQQ", 0x112, 0, 2)
        + struct.pack("<Iii", NDARRAY_V3_MAGIC, 0, 1)  # V3: int32 ndim
        + struct.pack("<q", 3)
        + struct.pack("<iii", 2, 1, 0)  # saved from gpu(1): still loads on CPU
        + data.tobytes()
        + struct.pack("<IiI", 0xF993FAC9, -1, 0)  # V2 empty array: ndim 0, nothing more
        + struct.pack("<Q", 2)
        + struct.pack("<Q", 1)
        + b"a"
        + struct.pack("<Q", 1)
        + b"b"
    )
    path = tmp_path / "v3.params"
    path.write_bytes(blob)
    back = read_mxnet_params(path)
    assert list(back) == ["a"]
    np.testing.assert_array_equal(back["a"], data)


def test_mxnet_corrupt_files_are_user_errors(tmp_path):
    good = tmp_path / "good.params"
    write_mxnet_params(good, _small_arrays())
    blob = good.read_bytes()

    truncated = tmp_path / "truncated.params"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PsaError, match=r"truncated\.params: cannot parse.*truncated"):
        read_mxnet_params(truncated)

    garbage = tmp_path / "garbage.params"
    garbage.write_bytes(b"\x00" * 3 + b"not an mxnet file" * 10)
    with pytest.raises(PsaError, match=r"garbage\.params: not an MXNet"):
        read_mxnet_params(garbage)

    with pytest.raises(PsaError, match="not found"):
        read_mxnet_params(tmp_path / "missing.params")


def test_mxnet_names_map_like_the_reference_converter():
    assert mxnet_to_psa_name("arg:conv1a_weight") == "conv1a.weight"
    assert mxnet_to_psa_name("arg:res2a_branch1_weight") == "b2.conv_branch1.weight"
    assert mxnet_to_psa_name("arg:res4b3_branch2b1_weight") == "b4_3.conv_branch2b1.weight"
    assert mxnet_to_psa_name("arg:bn5a_branch2a_gamma") == "b5.bn_branch2a.weight"
    assert mxnet_to_psa_name("arg:bn6a_branch2b2_beta") == "b6.bn_branch2b2.bias"
    assert mxnet_to_psa_name("aux:bn5b2_branch2b1_moving_mean") == "b5_2.bn_branch2b1.running_mean"
    assert mxnet_to_psa_name("aux:bn7_moving_var") == "bn7.running_var"
    assert mxnet_to_psa_name("arg:bn7_gamma") == "bn7.weight"
    assert mxnet_to_psa_name("arg:linear1000_weight") is None
    for bad in ("arg:fc1_weight", "arg:res2a_branch2a_gamma", "arg:bn2a_branch2a_weight"):
        with pytest.raises(KeyError):
            mxnet_to_psa_name(bad)


def psa_to_mxnet_name(key: str) -> str:
    """Inverse of the reference's convert_mxnet_to_torch, written independently for the test."""
    bn_params = {
        "weight": "arg:{}_gamma",
        "bias": "arg:{}_beta",
        "running_mean": "aux:{}_moving_mean",
        "running_var": "aux:{}_moving_var",
    }
    if key == "conv1a.weight":
        return "arg:conv1a_weight"
    if key.startswith("bn7."):
        return bn_params[key.split(".")[1]].format("bn7")
    block, layer, param = key.split(".")
    match = re.fullmatch(r"b(\d)(?:_(\d+))?", block)
    assert match, key
    position = "a" if match[2] is None else f"b{match[2]}"
    kind, branch = layer.split("_", 1)
    if kind == "conv":
        assert param == "weight"
        return f"arg:res{match[1]}{position}_{branch}_weight"
    return bn_params[param].format(f"bn{match[1]}{position}_{branch}")


def test_full_fake_resnet38_imagenet_file_loads_strictly(tmp_path):
    """All of ResNet-38 in MXNet's legacy layout, renamed back, loads into the backbone."""
    torch.manual_seed(0)
    model = build_model("resnet38d", "cam")
    backbone_state = {
        k: v for k, v in model.backbone.state_dict().items() if "num_batches_tracked" not in k
    }
    arrays = {psa_to_mxnet_name(k): v.numpy() for k, v in backbone_state.items()}
    arrays["arg:linear1000_weight"] = np.zeros((1000, 4096), np.float32)
    arrays["arg:linear1000_bias"] = np.zeros(1000, np.float32)
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_mxnet_params(path, arrays, version=0)
    del arrays

    with torch.no_grad():
        for tensor in model.backbone.state_dict().values():
            tensor.zero_()
    fc8_before = model.head.fc8.weight.detach().clone()
    notes = load_weights(model, path)
    stored = read_mxnet_params(path)
    loaded = model.backbone.state_dict()
    for key in backbone_state:
        np.testing.assert_array_equal(loaded[key].numpy(), stored[psa_to_mxnet_name(key)], key)
    torch.testing.assert_close(model.head.fc8.weight, fc8_before, rtol=0, atol=0)
    text = " ".join(notes)
    assert "backbone" in text and "classifier" in text


def test_mxnet_errors_name_the_keys(tmp_path, resnet_cam):
    state = {k: v for k, v in resnet_cam.backbone.state_dict().items() if "num_batches" not in k}
    names = {psa_to_mxnet_name(k): k for k in state}

    missing = tmp_path / "missing.params"
    subset = {n: state[k].numpy() for n, k in names.items() if not k.startswith("b4_3.")}
    write_mxnet_params(missing, subset)
    with pytest.raises(PsaError, match=r"missing\.params: .*missing key\(s\): b4_3\."):
        load_weights(resnet_cam, missing)

    unknown = tmp_path / "unknown.params"
    write_mxnet_params(unknown, {"arg:conv0_weight": np.zeros((1, 1), np.float32)})
    with pytest.raises(PsaError, match=r"unknown\.params: .*conv0_weight.*ResNet-38"):
        load_weights(resnet_cam, unknown)

    vgg = build_model("vgg16d", "cam")
    with pytest.raises(PsaError, match="backbone: resnet38d"):
        load_weights(vgg, unknown)


@pytest.fixture(scope="module")
def resnet_cam():
    return build_model("resnet38d", "cam")


# -- torchvision VGG-16 ------------------------------------------------------------

TORCHVISION_VGG16 = [  # (features index, in, out) of torchvision.models.vgg16
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
]  # fmt: skip
OUR_VGG = [
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
]  # fmt: skip


def _torchvision_vgg16_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for index, cin, cout in TORCHVISION_VGG16:
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g)
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g)
    for index, cin, cout in ((0, 25088, 4096), (3, 4096, 4096), (6, 4096, 1000)):
        state[f"classifier.{index}.weight"] = torch.randn(cout, cin, generator=g)
        state[f"classifier.{index}.bias"] = torch.randn(cout, generator=g)
    return state


def test_torchvision_vgg16_lands_in_the_right_layers(tmp_path):
    state = _torchvision_vgg16_state()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = build_model("vgg16d", "cam")
    fc8_before = model.head.fc8.weight.detach().clone()
    notes = load_weights(model, path)
    net = model.backbone
    for (index, _, _), name in zip(TORCHVISION_VGG16, OUR_VGG, strict=True):
        torch.testing.assert_close(getattr(net, name).weight, state[f"features.{index}.weight"])
        torch.testing.assert_close(getattr(net, name).bias, state[f"features.{index}.bias"])
    # fc6: output o ← torchvision unit 4·o; tap (i, j) ← position (3i, 3j) of the 7×7 window
    w6 = state["classifier.0.weight"]
    for o, c, i, j in [(0, 0, 0, 0), (5, 17, 1, 2), (1023, 511, 2, 2), (300, 200, 2, 0)]:
        assert net.fc6.weight[o, c, i, j] == w6[4 * o, c * 49 + 3 * i * 7 + 3 * j]
    torch.testing.assert_close(net.fc6.bias, state["classifier.0.bias"][::4])
    w7 = state["classifier.3.weight"]
    for o, c in [(0, 0), (7, 1000), (1023, 1023)]:
        assert net.fc7.weight[o, c, 0, 0] == w7[4 * o, 4 * c]
    torch.testing.assert_close(net.fc7.bias, state["classifier.3.bias"][::4])
    torch.testing.assert_close(model.head.fc8.weight, fc8_before, rtol=0, atol=0)
    assert any("decimated" in n for n in notes)


def test_torchvision_vgg16_bn_is_refused(tmp_path):
    state = {
        "features.0.weight": torch.zeros(64, 3, 3, 3),
        "features.1.running_mean": torch.zeros(64),
    }
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    with pytest.raises(PsaError, match="missing key"):
        load_weights(build_model("vgg16d", "cam"), path)
    with pytest.raises(PsaError, match="backbone: vgg16d"):
        load_weights(build_model("tiny", "cam"), path)


# -- .pth state dicts --------------------------------------------------------------


def test_backbone_only_starts_the_affinity_net_from_cam_weights(tmp_path):
    torch.manual_seed(0)
    cam = build_model("tiny", "cam")
    path = tmp_path / "cam.pt"
    save_torch(path, cam.state_dict())
    aff = build_model("tiny", "affinity")
    f9_before = aff.head.f9.weight.detach().clone()
    notes = load_weights(aff, path, backbone_only=True)
    for (k, v), (k2, v2) in zip(
        cam.backbone.state_dict().items(), aff.backbone.state_dict().items(), strict=True
    ):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)
    torch.testing.assert_close(aff.head.f9.weight, f9_before, rtol=0, atol=0)
    assert any("fc8.weight" in n for n in notes)


def test_full_load_and_wrappers(tmp_path):
    torch.manual_seed(1)
    source = build_model("tiny", "affinity")
    state = source.state_dict()
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    target = build_model("tiny", "affinity")
    notes = load_weights(target, wrapped)
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert any("'model'" in n for n in notes) and any("module." in n for n in notes)


def test_vgg_backbone_file_needs_backbone_only(tmp_path):
    """A converted vgg16_20M-style file (conv1_1 … fc7) is initial weights, not a CAM model."""
    vgg = build_model("vgg16d", "cam")
    path = tmp_path / "vgg16_20M.pth"
    save_torch(path, vgg.backbone.state_dict())
    with pytest.raises(PsaError, match=r"fc8\.weight.*backbone_only"):
        load_weights(vgg, path)
    assert "backbone" in load_weights(vgg, path, backbone_only=True)[0]


def test_mismatches_name_file_keys_and_shapes(tmp_path):
    path = tmp_path / "tiny_cam.pt"
    save_torch(path, build_model("tiny", "cam", num_classes=5).state_dict())
    with pytest.raises(
        PsaError,
        match=r"tiny_cam\.pt: .*fc8\.weight: file \(5, 128, 1, 1\) vs model \(20, 128, 1, 1\)",
    ):
        load_weights(build_model("tiny", "cam", num_classes=20), path)
    with pytest.raises(
        PsaError, match=r"tiny_cam\.pt: .*missing key\(s\): conv1_1.*unexpected key\(s\): block4"
    ):
        load_weights(build_model("vgg16d", "cam", num_classes=5), path)


def test_corrupt_and_foreign_files(tmp_path):
    model = build_model("tiny", "cam")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(PsaError, match=r"corrupt\.pth"):
        load_weights(model, corrupt)
    not_state = tmp_path / "opts.pth"
    torch.save({"lr": 0.1, "epochs": 3}, not_state)
    with pytest.raises(PsaError, match=r"opts\.pth: not a state dict.*epochs"):
        load_weights(model, not_state)
    caffe = tmp_path / "vgg16_20M.caffemodel"
    caffe.write_bytes(b"\x00")
    with pytest.raises(PsaError, match="Caffe.*convert"):
        load_weights(model, caffe)
    with pytest.raises(PsaError, match="not found"):
        load_weights(model, tmp_path / "nope.pth")
