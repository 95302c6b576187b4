"""State-dict names and shapes are those of the published PSA checkpoints.

The expected names are written out here from the reference's layer list
(jiwoon-ahn/psa network/resnet38d.py, resnet38_cls.py, resnet38_aff.py,
vgg16d.py, vgg16_cls.py, vgg16_aff.py), not derived from our modules. The
published files were saved with torch 0.4: BatchNorm has weight, bias,
running_mean and running_var, and no num_batches_tracked.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from psa_core.io import load_torch, save_torch
from psa_core.models import build_model, create_model

# Reference ResNet-38: (block, has a 1x1 projection `conv_branch1`, is a bottleneck)
RESNET38_BLOCKS = [
    ("b2", True, False),
    ("b2_1", False, False),
    ("b2_2", False, False),
    ("b3", True, False),
    ("b3_1", False, False),
    ("b3_2", False, False),
    ("b4", True, False),
    ("b4_1", False, False),
    ("b4_2", False, False),
    ("b4_3", False, False),
    ("b4_4", False, False),
    ("b4_5", False, False),
    ("b5", True, False),
    ("b5_1", False, False),
    ("b5_2", False, False),
    ("b6", True, True),
    ("b7", True, True),
]
BN_0_4 = ("weight", "bias", "running_mean", "running_var")
VGG_CONVS = [
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7",
]  # fmt: skip


def resnet38_backbone_keys() -> list[str]:
    keys = ["conv1a.weight"]
    for block, projection, bottleneck in RESNET38_BLOCKS:
        bns = ["bn_branch2a", "bn_branch2b1"] + (["bn_branch2b2"] if bottleneck else [])
        convs = ["conv_branch2a", "conv_branch2b1"] + (["conv_branch2b2"] if bottleneck else [])
        convs += ["conv_branch1"] if projection else []
        keys += [f"{block}.{bn}.{p}" for bn in bns for p in BN_0_4]
        keys += [f"{block}.{conv}.weight" for conv in convs]
    keys += [f"bn7.{p}" for p in BN_0_4]
    return keys


def vgg16_backbone_keys() -> list[str]:
    return [f"{conv}.{p}" for conv in VGG_CONVS for p in ("weight", "bias")]


AFFINITY_CONVS = ["f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"]
VGG_GROUP_NORMS = [f"gn8_{i}.{p}" for i in (3, 4, 5) for p in ("weight", "bias")]

PUBLISHED_KEYS = {
    ("resnet38d", "cam"): resnet38_backbone_keys() + ["fc8.weight"],  # res38_cls.pth
    ("resnet38d", "affinity"): resnet38_backbone_keys() + AFFINITY_CONVS,  # res38_aff.pth
    ("vgg16d", "cam"): vgg16_backbone_keys() + ["fc8.weight"],  # vgg_cls.pth
    ("vgg16d", "affinity"): vgg16_backbone_keys() + AFFINITY_CONVS + VGG_GROUP_NORMS,  # vgg_aff.pth
}

# Shapes from the reference constructors (a selection covering every kind of layer).
PUBLISHED_SHAPES = {
    ("resnet38d", "cam"): {
        "conv1a.weight": (64, 3, 3, 3),
        "b2.conv_branch2a.weight": (128, 64, 3, 3),
        "b2.conv_branch1.weight": (128, 64, 1, 1),
        "b4_5.bn_branch2b1.running_var": (512,),
        "b5.conv_branch2a.weight": (512, 512, 3, 3),
        "b5.conv_branch2b1.weight": (1024, 512, 3, 3),
        "b5.conv_branch1.weight": (1024, 512, 1, 1),
        "b6.conv_branch2a.weight": (512, 1024, 1, 1),
        "b6.conv_branch2b1.weight": (1024, 512, 3, 3),
        "b6.conv_branch2b2.weight": (2048, 1024, 1, 1),
        "b7.conv_branch2b1.weight": (2048, 1024, 3, 3),
        "b7.conv_branch1.weight": (4096, 2048, 1, 1),
        "bn7.running_mean": (4096,),
        "fc8.weight": (20, 4096, 1, 1),
    },
    ("resnet38d", "affinity"): {
        "f8_3.weight": (64, 512, 1, 1),
        "f8_4.weight": (128, 1024, 1, 1),
        "f8_5.weight": (256, 4096, 1, 1),
        "f9.weight": (448, 448, 1, 1),
    },
    ("vgg16d", "cam"): {
        "conv1_1.weight": (64, 3, 3, 3),
        "conv3_3.bias": (256,),
        "conv5_3.weight": (512, 512, 3, 3),
        "fc6.weight": (1024, 512, 3, 3),
        "fc7.weight": (1024, 1024, 1, 1),
        "fc8.weight": (20, 1024, 1, 1),
    },
    ("vgg16d", "affinity"): {
        "f8_3.weight": (64, 512, 1, 1),
        "f8_4.weight": (128, 512, 1, 1),
        "f8_5.weight": (256, 1024, 1, 1),
        "f9.weight": (448, 448, 1, 1),
        "gn8_3.weight": (64,),
        "gn8_5.bias": (256,),
    },
}

PUBLISHED = list(PUBLISHED_KEYS)


@pytest.fixture(scope="module")
def models():
    cache: dict[tuple[str, str], nn.Module] = {}

    def get(backbone: str, head: str) -> nn.Module:
        if (backbone, head) not in cache:
            cache[backbone, head] = build_model(backbone, head, num_classes=20)
        return cache[backbone, head]

    yield get
    cache.clear()


@pytest.mark.parametrize(("backbone", "head"), PUBLISHED)
def test_state_dict_names_and_shapes_are_the_published_ones(backbone, head, models):
    state = models(backbone, head).state_dict()
    expected = PUBLISHED_KEYS[backbone, head]
    assert len(expected) == len(set(expected))
    assert sorted(state) == sorted(expected)
    for key, shape in PUBLISHED_SHAPES[backbone, head].items():
        assert tuple(state[key].shape) == shape, key


def _published_like(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A plain dict in the published layout (no BN counters), one constant per key, shuffled."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        k: torch.full(v.shape, float(i)) for i, (k, v) in enumerate(model.state_dict().items())
    }
    keys = list(state)
    order = torch.randperm(len(keys), generator=generator).tolist()
    return {keys[i]: state[keys[i]] for i in order}


@pytest.mark.parametrize(("backbone", "head"), PUBLISHED)
def test_published_layout_loads_strictly(backbone, head, models):
    model = models(backbone, head)
    published = _published_like(model, seed=1)
    assert not any("num_batches_tracked" in k for k in published)
    model.load_state_dict(published, strict=True)
    reloaded = model.state_dict()
    for key, value in published.items():
        torch.testing.assert_close(reloaded[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(("backbone", "head"), [("vgg16d", "affinity"), ("tiny", "cam")])
def test_save_and_reload_through_io(backbone, head, models, tmp_path):
    model = models(backbone, head)
    path = tmp_path / "weights.pt"
    save_torch(path, model.state_dict())
    fresh = build_model(backbone, head, num_classes=20)
    fresh.load_state_dict(load_torch(path), strict=True)
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert k1 == k2
        torch.testing.assert_close(v1, v2, rtol=0, atol=0)


def test_bn_counters_in_a_file_are_accepted():
    model = build_model("tiny", "cam")
    model.backbone.stem.append(nn.BatchNorm2d(32))  # an extra BN at the end of the stem
    plain = model.state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in plain)
    with_counter = dict(plain)
    with_counter["stem.3.num_batches_tracked"] = torch.tensor(7)
    model.load_state_dict(with_counter, strict=True)
    assert int(model.backbone.stem[3].num_batches_tracked) == 7
    model.load_state_dict(plain, strict=True)  # and without: the current value is kept
    assert int(model.backbone.stem[3].num_batches_tracked) == 7


def test_prefixed_keys_and_nested_models_work():
    model = build_model("tiny", "affinity")
    prefixed = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    prefixed.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    model.load_state_dict(prefixed, strict=True)

    wrapper = nn.ModuleDict({"net": model})
    state = wrapper.state_dict()
    assert "net.f9.weight" in state and "net.stem.0.0.weight" in state
    assert not any(".backbone." in k or ".head." in k for k in state)
    nn.ModuleDict({"net": build_model("tiny", "affinity")}).load_state_dict(state, strict=True)


def test_wrong_keys_still_fail_strict_loading():
    model = build_model("tiny", "cam")
    state = model.state_dict()
    state["fc9.weight"] = state.pop("fc8.weight")
    with pytest.raises(RuntimeError, match="fc8.weight"):
        model.load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    ("backbone", "head"),
    [("resnet38d", "cam"), ("vgg16d", "cam"), ("tiny", "affinity"), ("tiny", "seg")],
)  # every backbone and every head once: resnet38d's other head alone would cost 4 s
def test_a_checkpoint_loads_into_a_model_built_without_initial_weights(
    backbone, head, models, tmp_path
):
    """create_model(checkpoint_path=...) skips the random initialisation: every tensor comes
    from the file (here constants no initialiser draws), BN counters start at 0."""
    model = models(backbone, head) if (backbone, head) in PUBLISHED_KEYS else None
    model = model or build_model(backbone, head, num_classes=20)
    published = _published_like(model, seed=2)
    path = tmp_path / "weights.pt"
    save_torch(path, published)
    loaded = create_model(backbone, head, num_classes=20, checkpoint_path=path)
    state = loaded.state_dict()
    assert sorted(state) == sorted(published)
    for key, value in published.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    counters = [m.num_batches_tracked for m in loaded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(int(c) == 0 for c in counters)
    assert not loaded.training and all(p.device.type == "cpu" for p in loaded.parameters())
