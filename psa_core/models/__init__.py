"""Networks of PSA: backbones, the CAM, affinity and segmentation heads, and weight import
(docs/design.md §3).

    model = build_model("resnet38d", "cam", num_classes=20)
    load_weights(model, "ilsvrc-cls_rna-a1_cls1000_ep-0001.params")

`BACKBONES` maps a backbone name to its factory; `HEADS` lists the head names.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from psa_core.affinity import DEFAULT_RADIUS
from psa_core.errors import PsaError
from psa_core.models.nets import (
    AffinityHead,
    AffinityNet,
    CAMHead,
    CAMNet,
    PsaNet,
    SegHead,
    SegNet,
)
from psa_core.models.resnet38d import resnet38d
from psa_core.models.tiny import tiny
from psa_core.models.vgg16d import vgg16d
from psa_core.models.weights import load_weights
from psa_core.settings import SegmentationSettings

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet38d": resnet38d,
    "vgg16d": vgg16d,
    "tiny": tiny,
}
"""Backbone name → factory; keyword options of the factory are `build_model`'s **backbone_kwargs."""

HEADS = ("cam", "affinity", "seg")

# Per (backbone, head) defaults of the reference: VGG's fc6 is dilated by 4 in
# the affinity network only, and its affinity head adds GroupNorm.
_BACKBONE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("vgg16d", "affinity"): {"fc6_dilation": 4}
}
_AFFINITY_GROUP_NORM = {"vgg16d"}
# The published VGG-16 classifier's forward_cam takes sqrt(relu(fc8 · F)).
_SQRT_CAM = {"vgg16d"}
# Width of the segmentation head's 3×3 conv: DeepLab-LargeFOV's 1024, and a
# quarter of that for the small CPU backbone (its conv6 has 128 channels).
_SEG_HEAD_CHANNELS = {"resnet38d": 1024, "vgg16d": 1024, "tiny": 256}


def build_model(
    backbone: str,
    head: str,
    num_classes: int = 20,
    *,
    radius: int = DEFAULT_RADIUS,
    dilation: int = SegmentationSettings.dilation,
    **backbone_kwargs: Any,
) -> PsaNet:
    """Build a CAM, affinity or segmentation network on a named backbone.

    Args:
        backbone: a key of `BACKBONES` ("resnet38d", "vgg16d", "tiny").
        head: "cam" (a `CAMNet`, K = `num_classes` outputs) or "affinity" (an
            `AffinityNet` with pair radius `radius`; `num_classes` is unused) or
            "seg" (a `SegNet`: K + 1 outputs, the background first, with a
            3×3 conv of rate `dilation` in its head).
        backbone_kwargs: options of the backbone factory, e.g. `fc6_dilation`
            for vgg16d (default 1 for "cam", 4 for "affinity", as in PSA) or
            `width` for tiny.

    Raises:
        PsaError: unknown backbone / head name or backbone option.
    """
    if backbone not in BACKBONES:
        raise PsaError(f"backbone '{backbone}': unknown; choose one of {', '.join(BACKBONES)}")
    if head not in HEADS:
        raise PsaError(f"head '{head}': unknown; choose one of {', '.join(HEADS)}")
    factory = BACKBONES[backbone]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(backbone_kwargs) - set(accepted))
    if unknown:
        options = ", ".join(accepted) or "none"
        raise PsaError(
            f"backbone '{backbone}' has no option {', '.join(unknown)}; its options: {options}"
        )
    kwargs = {**_BACKBONE_DEFAULTS.get((backbone, head), {}), **backbone_kwargs}
    net = factory(**kwargs)
    if head == "cam":
        head_ = CAMHead(net.out_channels["conv6"], num_classes, sqrt_cam=backbone in _SQRT_CAM)
        return CAMNet(net, head_)
    if head == "seg":
        if int(dilation) != dilation or dilation < 1:
            raise PsaError(f"segmentation head dilation {dilation}: use a positive integer")
        seg_head = SegHead(
            net.out_channels["conv6"],
            num_classes + 1,
            dilation=int(dilation),
            channels=_SEG_HEAD_CHANNELS.get(backbone, 1024),
        )
        return SegNet(net, seg_head)
    return AffinityNet(
        net,
        AffinityHead(net.out_channels, group_norm=backbone in _AFFINITY_GROUP_NORM, radius=radius),
    )


def _build_uninitialised(
    backbone: str, head: str, num_classes: int, options: Mapping[str, Any]
) -> PsaNet:
    """`build_model` without drawing initial weights, for a model whose checkpoint follows.

    Built on the meta device: `load_weights(..., assign=True)` then gives it the
    file's tensors, with no random initialisation and no copy (about 1.4 s of a
    resnet38d job's start-up on CPU, benchmarks/RESULTS.md). BatchNorm counters,
    which published files lack, start at 0.
    """
    with torch.device("meta"):
        model = build_model(backbone, head, num_classes=num_classes, **options)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.num_batches_tracked = torch.zeros((), dtype=torch.long)
    return model


def create_model(
    backbone: str,
    head: str,
    num_classes: int = 20,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    init_weights: str | os.PathLike | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    log: logging.Logger | None = None,
    **options: Any,
) -> PsaNet:
    """A model ready to use: built, its weights loaded, on `device`.

    Either `checkpoint_path`: trained weights of this very model, loaded
    strictly (every name and shape must match), eval mode, for inference.
    Or `init_weights` (optional): a model to train, its new layers seeded by
    `seed` so every run of one config starts the same, its backbone from an
    ImageNet file or an earlier stage's weights (the CAM network for
    AffinityNet). `options` go to `build_model` (`radius`, `dilation`, …).

    Raises:
        PsaError: unknown names, a missing or mismatched weights file.
    """
    from psa_core.device import resolve_device

    if checkpoint_path is not None and init_weights is not None:
        raise PsaError("create_model: give checkpoint_path (trained) or init_weights, not both")
    if seed is not None:
        torch.manual_seed(seed)  # new layers start the same in every run of a config
    if checkpoint_path is not None:
        model = _build_uninitialised(backbone, head, num_classes, options)
        load_weights(model, checkpoint_path, assign=True)
        return model.to(resolve_device(device) if isinstance(device, str) else device).eval()
    model = build_model(backbone, head, num_classes=num_classes, **options)
    if init_weights:
        for note in load_weights(model, init_weights, backbone_only=True):
            (log or logging.getLogger("psa")).info("init weights: %s", note)
    return model


__all__ = [
    "BACKBONES",
    "HEADS",
    "AffinityHead",
    "AffinityNet",
    "CAMHead",
    "CAMNet",
    "PsaNet",
    "SegHead",
    "SegNet",
    "build_model",
    "create_model",
    "load_weights",
]
