"""Every registered backbone × head: shapes, stride 8, gradients, freezing rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from psa_core.constants import FEATURE_STRIDE
from psa_core.errors import PsaError
from psa_core.models import BACKBONES, HEADS, build_model
from psa_core.models.tiny import TinyNet, tiny
from psa_core.optim import param_groups
from psa_core.transforms import CAFFE_VGG_NORMALIZATION, IMAGENET_NORMALIZATION

NUM_CLASSES = 5
# (batch, H, W) per backbone: never multiples of 8, to check the ceil(H / 8) grid, and
# at least 5 x 9 cells for radius-5 pairs. ResNet-38 is big, so it gets the smallest
# such input. One shape per backbone: CPU conv kernels are set up once per shape.
SHAPES = {"resnet38d": (1, 36, 68)}
DEFAULT_SHAPE = (2, 44, 76)

COMBOS = [(b, h) for b in BACKBONES for h in HEADS]


def _shape(backbone: str) -> tuple[int, int, int]:
    return SHAPES.get(backbone, DEFAULT_SHAPE)


def _grid(backbone: str) -> tuple[int, int]:
    _, height, width = _shape(backbone)
    return math.ceil(height / FEATURE_STRIDE), math.ceil(width / FEATURE_STRIDE)


def _input(backbone: str, seed: int = 0) -> torch.Tensor:
    batch, height, width = _shape(backbone)
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cached_model():
    """build_model with a per-module cache (ResNet-38 takes ~1 s to build); do not mutate."""
    cache: dict[tuple[str, str], torch.nn.Module] = {}

    def get(backbone: str, head: str) -> torch.nn.Module:
        if (backbone, head) not in cache:
            torch.manual_seed(0)
            cache[backbone, head] = build_model(backbone, head, num_classes=NUM_CLASSES)
        return cache[backbone, head]

    yield get
    cache.clear()


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_backbone_levels_are_stride_8(backbone, cached_model):
    model = cached_model(backbone, "cam").eval()
    with torch.no_grad():
        levels = model.forward_features(_input(backbone))
    assert set(levels) == {"conv4", "conv5", "conv6"}
    for key, value in levels.items():
        assert value.shape == (
            _shape(backbone)[0],
            model.backbone.out_channels[key],
            *_grid(backbone),
        )
        assert torch.isfinite(value).all()


# The published VGG-16 classifier's forward_cam is sqrt(relu(fc8 · F)); the others relu(fc8 · F).
SQRT_CAM_BACKBONES = {"vgg16d"}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_cam_is_relu_of_the_classifier_and_logits_are_its_average(backbone, cached_model):
    model = cached_model(backbone, "cam").eval()
    x = _input(backbone)
    with torch.no_grad():
        cams = model.cam(x)
        logits = model(x)
        feature = model.forward_features(x)["conv6"]
    assert cams.shape == (_shape(backbone)[0], NUM_CLASSES, *_grid(backbone))
    assert (cams >= 0).all()
    raw = torch.einsum("bchw,kc->bkhw", feature, model.head.fc8.weight[:, :, 0, 0])
    expected = raw.clamp_min(0)
    if backbone in SQRT_CAM_BACKBONES:
        expected = expected.sqrt()
    torch.testing.assert_close(cams, expected, rtol=1e-4, atol=1e-4)
    # eval: no dropout, so logits = spatial mean of the pre-ReLU class maps
    torch.testing.assert_close(logits, raw.mean(dim=(2, 3)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_affinity_features_shape(backbone, cached_model):
    model = cached_model(backbone, "affinity").eval()
    with torch.no_grad():
        f = model.features(_input(backbone))
    assert f.shape == (_shape(backbone)[0], 448, *_grid(backbone))
    assert torch.isfinite(f).all()


@pytest.mark.parametrize(("backbone", "head"), COMBOS)
def test_train_step_shapes_gradients_and_freezing(backbone, head, cached_model):
    """One SGD step: output shape / range, finite gradients, frozen layers and BN untouched."""
    model = copy.deepcopy(cached_model(backbone, head))
    model.eval()
    model.train()  # the override must re-apply the freezing every time
    frozen = [p for m in model.backbone.frozen_modules() for p in m.parameters()]
    trains_bn = getattr(model.backbone, "trains_batchnorm", False)
    batchnorms = [
        m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and not trains_bn
    ]
    if backbone in ("resnet38d", "vgg16d"):
        assert frozen
    if backbone == "resnet38d":
        assert batchnorms
    assert all(not p.requires_grad for p in frozen)
    for bn in batchnorms:
        assert not bn.training
        assert not bn.weight.requires_grad and not bn.bias.requires_grad
    before_frozen = [p.detach().clone() for p in frozen]
    before_bn = [
        t.detach().clone()
        for bn in batchnorms
        for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)
    ]
    new_before = [m.weight.detach().clone() for m in model.new_modules()]

    optimizer = torch.optim.SGD(param_groups(model, lr=0.01, weight_decay=5e-4), lr=0.01)
    batch = _shape(backbone)[0]
    rows, cols = _grid(backbone)
    out = model(_input(backbone))
    if head == "cam":
        assert out.shape == (batch, NUM_CLASSES)
    elif head == "seg":
        assert out.shape == (batch, NUM_CLASSES + 1, *_shape(backbone)[1:])
    else:
        assert out.shape == (batch, 34, (rows - 4) * (cols - 8))
        assert (out > 0).all() and (out <= 1).all()
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    for module in model.new_modules():
        assert module.weight.grad is not None and torch.isfinite(module.weight.grad).all()
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    assert trainable, "some backbone layers must train"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    optimizer.step()

    for p, old in zip(frozen, before_frozen, strict=True):
        assert p.grad is None
        torch.testing.assert_close(p.detach(), old, rtol=0, atol=0)
    after_bn = [
        t for bn in batchnorms for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)
    ]
    for new, old in zip(after_bn, before_bn, strict=True):
        torch.testing.assert_close(new.detach(), old, rtol=0, atol=0)
    changed = [
        not torch.equal(m.weight.detach(), old)
        for m, old in zip(model.new_modules(), new_before, strict=True)
    ]
    assert any(changed), "the new layers must train"


def test_resnet38d_and_vgg16d_freeze_the_reference_layers(cached_model):
    res = cached_model("resnet38d", "cam").backbone
    assert res.frozen_modules() == [res.conv1a, res.b2, res.b2_1, res.b2_2]
    vgg = cached_model("vgg16d", "cam").backbone
    assert vgg.frozen_modules() == [vgg.conv1_1, vgg.conv1_2, vgg.conv2_1, vgg.conv2_2]
    assert build_model("tiny", "cam").backbone.frozen_modules() == []


def test_normalization_per_backbone(cached_model):
    assert cached_model("resnet38d", "affinity").normalization == IMAGENET_NORMALIZATION
    assert build_model("tiny", "cam").normalization == IMAGENET_NORMALIZATION
    assert build_model("vgg16d", "cam").normalization == CAFFE_VGG_NORMALIZATION


def test_new_modules():
    cam = build_model("tiny", "cam")
    assert cam.new_modules() == [cam.head.fc8]
    aff = build_model("tiny", "affinity")
    assert aff.new_modules() == [aff.head.f8_3, aff.head.f8_4, aff.head.f8_5, aff.head.f9]
    vgg = build_model("vgg16d", "affinity")
    assert {id(m) for m in vgg.new_modules()} == {
        id(getattr(vgg.head, n)) for n in ("f8_3", "f8_4", "f8_5", "f9")
    }  # the reference's from_scratch_layers: GroupNorm trains with the pretrained groups


def test_vgg_fc6_dilation_defaults_follow_the_reference():
    assert build_model("vgg16d", "cam").backbone.fc6.dilation == (1, 1)
    assert build_model("vgg16d", "affinity").backbone.fc6.dilation == (4, 4)
    assert build_model("vgg16d", "cam", fc6_dilation=12).backbone.fc6.dilation == (12, 12)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_segmentation_head_is_stride_8_and_upsamples_bilinearly(backbone, cached_model):
    """logits at stride 8 with K + 1 channels; forward = their bilinear upsampling."""
    model = cached_model(backbone, "seg").eval()
    x = _input(backbone)
    with torch.no_grad():
        logits = model.logits(x)
        out = model(x)
    assert logits.shape == (x.shape[0], NUM_CLASSES + 1, *_grid(backbone))
    assert model.num_classes == NUM_CLASSES + 1
    expected = torch.nn.functional.interpolate(
        logits, size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()


def test_segmentation_head_layout_and_dilation():
    """DeepLab-LargeFOV: dilated 3x3 conv, ReLU, dropout, 1x1 conv; the rate is an option."""
    model = build_model("tiny", "seg", num_classes=3, dilation=5)
    head = model.head
    assert head.seg6.kernel_size == (3, 3) and head.seg6.dilation == (5, 5)
    assert head.seg6.padding == (5, 5)  # the stride-8 grid keeps its size
    assert head.seg8.kernel_size == (1, 1) and head.seg8.out_channels == 4
    assert isinstance(head.seg_drop, torch.nn.Dropout2d)
    assert model.new_modules() == [head.seg6, head.seg8]
    assert build_model("tiny", "seg").head.seg6.dilation == (12, 12)  # DeepLab's default
    keys = set(model.state_dict())
    assert {"seg6.weight", "seg6.bias", "seg8.weight", "seg8.bias"} <= keys  # flat layout
    with pytest.raises(PsaError, match="dilation 0"):
        build_model("tiny", "seg", dilation=0)


def test_segmentation_head_dropout_only_in_training():
    model = build_model("tiny", "seg", num_classes=2)
    x = _input("tiny")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.logits(x), model.logits(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(model.logits(x), model.logits(x))


def test_affinity_radius_option():
    model = build_model("tiny", "affinity", radius=3).eval()
    with torch.no_grad():
        out = model(_input("tiny"))
    rows, cols = _grid("tiny")
    assert out.shape == (_shape("tiny")[0], 12, (rows - 2) * (cols - 4))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("resnet50", "cam"), {}, "resnet38d, vgg16d, tiny"),
        (("tiny", "segmentation"), {}, "cam, affinity"),
        (("tiny", "cam"), {"fc6_dilation": 4}, "fc6_dilation.*width"),
        (("tiny", "cam"), {"width": 12}, "multiple of 8"),
    ],
)
def test_build_model_errors_name_the_choices(args, kwargs, match):
    with pytest.raises(PsaError, match=match):
        build_model(*args, **kwargs)


def test_affinity_input_too_small_is_a_user_error():
    model = build_model("tiny", "affinity").eval()
    with torch.no_grad(), pytest.raises(PsaError, match="too small"):
        model(torch.zeros(1, 3, 32, 32))


def test_tiny_batchnorm_trains_while_published_backbones_stay_frozen():
    """tiny trains from scratch, so its BN layers update; see psa_core/models/tiny.py."""
    model = build_model("tiny", "cam").train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert bn.training and bn.weight.requires_grad
    assert not torch.equal(before, bn.running_mean)
    assert not getattr(build_model("vgg16d", "cam").backbone, "trains_batchnorm", False)


def test_vgg_cam_is_sqrt_of_relu_of_the_head_conv():
    """vgg16d: cam() = sqrt(relu(fc8 · F)), the published forward_cam (docs/design.md §1.1)."""
    torch.manual_seed(0)
    model = build_model("vgg16d", "cam", num_classes=NUM_CLASSES).eval()
    feature = torch.randn(1, model.backbone.out_channels["conv6"], 3, 4)
    weight = model.head.fc8.weight[:, :, 0, 0]
    with torch.no_grad():
        got = model.head.cam(feature)
    manual = torch.einsum("bchw,kc->bkhw", feature, weight)
    torch.testing.assert_close(got, torch.sqrt(torch.relu(manual)), rtol=1e-5, atol=1e-6)
    assert model.head.sqrt_cam
    assert not build_model("tiny", "cam").head.sqrt_cam
    assert not build_model("resnet38d", "cam").head.sqrt_cam


def _receptive_field(net: torch.nn.Module, size: int = 512) -> int:
    """Width (px) of the input rows that move conv6's centre cell: brute force by autograd."""
    net.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    conv6 = net(x)["conv6"]
    centre = conv6[0, :, conv6.shape[2] // 2, conv6.shape[3] // 2]
    # a random direction over the channels so no channel's zero gradient hides the field
    weights = torch.randn(centre.shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((centre * weights).sum(), x)
    cols = torch.nonzero(grad.abs().sum(dim=(0, 1, 2))).flatten()
    return int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize(("dilations", "field"), [((1, 1), 111), ((2, 4), 239)])
def test_tiny_receptive_field(dilations, field):
    """Hand count: three stride-2 3x3 convs reach 15 px at stride 8, and each 3x3 conv of
    dilation d there adds 16·d. Block 4 (two convs, d 1) gives 47; blocks 5 and 6 add 32·d
    each: 47 + 32 + 32 = 111 undilated, 47 + 64 + 128 = 239 at d 2 and 4. The default
    stays below the 100-200 px images `tiny` trains on (issue 17)."""
    torch.manual_seed(0)
    net = tiny(width=8, dilations=dilations)
    assert _receptive_field(net) == field
    if dilations == (1, 1):
        assert _receptive_field(tiny(width=8)) == field  # the default


def test_tiny_set_dilations_is_building_with_them():
    """cam.wide_field_share switches a built net: the same output as one built dilated, on
    the same weights, and back; the state dict does not change."""
    torch.manual_seed(0)
    wide = tiny(width=8, dilations=TinyNet.WIDE_DILATIONS).eval()
    net = tiny(width=8).eval()
    net.load_state_dict(wide.state_dict())
    x = torch.randn(1, 3, 64, 80)
    narrow_out = net(x)["conv6"]
    net.set_dilations(TinyNet.WIDE_DILATIONS)
    assert _receptive_field(net) == 239
    torch.testing.assert_close(net(x)["conv6"], wide(x)["conv6"], rtol=0, atol=0)
    net.set_dilations((1, 1))
    torch.testing.assert_close(net(x)["conv6"], narrow_out, rtol=0, atol=0)
    assert not torch.equal(narrow_out, wide(x)["conv6"])
