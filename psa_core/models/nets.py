"""The two PSA networks, each composed as `Model(backbone, head)` (docs/design.md §1.1, §1.3).

- `CAMNet(backbone, CAMHead(...))`: image-level logits and class activation maps.
- `AffinityNet(backbone, AffinityHead(...))`: pair affinities on the stride-8 grid.
- `SegNet(backbone, SegHead(...))`: the segmentation network trained on the
  random-walk masks (docs/design.md §1.6), K + 1 logits per pixel.

A backbone is any module with `forward(x) -> {"conv4", "conv5", "conv6"}`
(stride 8; "conv6" is the final map), `out_channels` (channels per key),
`normalization` (its input convention), `frozen_modules()` and optionally
`trains_batchnorm` (True for a from-scratch backbone whose BN layers train).

Checkpoint layout. The published PSA checkpoints (res38_cls.pth, res38_aff.pth,
vgg_cls.pth, vgg_aff.pth) were saved from one flat module, so their keys are
`conv1a.weight`, `b2.bn_branch2a.running_mean`, `fc8.weight`, `f9.weight`, …,
without our `backbone.` / `head.` prefixes. Two hooks on `PsaNet`, and only
there, make both directions flat:

- `state_dict()` drops the `backbone.` / `head.` level (backbone and head child
  names are checked to be disjoint), so saved files have the published layout;
- `load_state_dict()` puts the level back by looking up each key's first name
  in the backbone or the head; already-prefixed keys are accepted as they are.

BatchNorm `num_batches_tracked` counters: the published files were written by
torch 0.4, which had no such buffer. The counter carries no information here
(published backbones keep BN frozen; tiny's BN uses a fixed momentum, which
never reads it): `state_dict()` leaves it
out and `load_state_dict()` fills in the module's current value where a file
lacks it (and loads it where a file has it). Published files, our own files and
plain-torch files of the same network therefore all load with `strict=True`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psa_core.affinity import DEFAULT_RADIUS, pair_affinities, pair_offsets
from psa_core.transforms import Normalization

FEATURE_LEVELS = ("conv4", "conv5", "conv6")
"""Backbone outputs the affinity head uses, shallow to deep; "conv6" also feeds the CAM head."""

AFFINITY_WIDTHS = (64, 128, 256)
"""Channels of the three 1×1 projections of the affinity head (one per level)."""

AFFINITY_CHANNELS = sum(AFFINITY_WIDTHS)
"""Channels of the AffinityNet feature f (448)."""

_GROUP_NORM_GROUPS = (8, 16, 32)  # groups of gn8_3 / gn8_4 / gn8_5 (VGG variant of the reference)
_SUBMODULES = ("backbone", "head")
BN_COUNTER = "num_batches_tracked"
"""The BatchNorm buffer that state dicts leave out (see the module docstring)."""


class Backbone(Protocol):
    """What the models need from a backbone (see the module docstring)."""

    out_channels: dict[str, int]
    normalization: Normalization

    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...

    def frozen_modules(self) -> list[nn.Module]: ...


def _draw(init: Callable[..., Any], tensor: Tensor, **kwargs: Any) -> None:
    """`init(tensor, **kwargs)`, but nothing on the meta device: a network built there
    gets every tensor from its checkpoint (`psa_core.models.create_model`), and some
    initialisers cost about 1 s of lazy imports on meta tensors."""
    if not tensor.is_meta:
        init(tensor, **kwargs)


# -- heads --------------------------------------------------------------------


class CAMHead(nn.Module):
    """Dropout → global average pooling → bias-free 1×1 conv to K classes (`fc8`).

    `sqrt_cam`: the CAM is `sqrt(relu(fc8 · F))`, as the published VGG-16
    classifier's `forward_cam` computes it (docs/design.md §1.1), so `vgg_cls.pth`
    gives the published CAMs; ResNet-38 and tiny use `relu(fc8 · F)`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 20,
        dropout: float = 0.5,
        *,
        sqrt_cam: bool = False,
    ) -> None:
        super().__init__()
        self.sqrt_cam = sqrt_cam
        self.dropout7 = nn.Dropout2d(dropout)
        self.fc8 = nn.Conv2d(in_channels, num_classes, 1, bias=False)
        _draw(nn.init.xavier_uniform_, self.fc8.weight)

    def forward(self, feature: Tensor) -> Tensor:
        """feature: (B, C, h, w) → logits (B, K)."""
        pooled = self.dropout7(feature).mean(dim=(2, 3), keepdim=True)
        return self.fc8(pooled).flatten(1)

    def cam(self, feature: Tensor) -> Tensor:
        """feature: (B, C, h, w) → relu(fc8(feature)) (B, K, h, w), no dropout; sqrt'ed if `sqrt_cam`."""
        cam = F.relu(F.conv2d(feature, self.fc8.weight))
        return torch.sqrt(cam) if self.sqrt_cam else cam

    def new_modules(self) -> list[nn.Module]:
        return [self.fc8]


class AffinityHead(nn.Module):
    """Per level a bias-free 1×1 conv (+ GroupNorm) and ELU; concat; 1×1 conv 448→448 and ELU.

    Layer names follow the reference: `f8_3`, `f8_4`, `f8_5` (conv4, conv5,
    conv6 levels), `gn8_3`… when `group_norm` (the VGG-16 variant), `f9`.
    """

    def __init__(
        self,
        in_channels: Mapping[str, int],
        group_norm: bool = False,
        radius: int = DEFAULT_RADIUS,
    ) -> None:
        super().__init__()
        self.radius = radius
        self.num_offsets = len(pair_offsets(radius))
        for index, (level, width) in enumerate(zip(FEATURE_LEVELS, AFFINITY_WIDTHS, strict=True)):
            conv = nn.Conv2d(in_channels[level], width, 1, bias=False)
            _draw(nn.init.kaiming_normal_, conv.weight)
            self.add_module(f"f8_{index + 3}", conv)
        self.f9 = nn.Conv2d(AFFINITY_CHANNELS, AFFINITY_CHANNELS, 1, bias=False)
        _draw(nn.init.xavier_uniform_, self.f9.weight, gain=4)
        self.group_norm = group_norm
        if group_norm:
            for index, (groups, width) in enumerate(
                zip(_GROUP_NORM_GROUPS, AFFINITY_WIDTHS, strict=True)
            ):
                self.add_module(f"gn8_{index + 3}", nn.GroupNorm(groups, width))

    def features(self, levels: Mapping[str, Tensor]) -> Tensor:
        """levels: the backbone dict → f (B, 448, h, w)."""
        projected = []
        for index, level in enumerate(FEATURE_LEVELS):
            x = getattr(self, f"f8_{index + 3}")(levels[level])
            if self.group_norm:
                x = getattr(self, f"gn8_{index + 3}")(x)
            projected.append(F.elu(x))
        return F.elu(self.f9(torch.cat(projected, dim=1)))

    def forward(self, levels: Mapping[str, Tensor]) -> Tensor:
        """levels: the backbone dict → affinities (B, n_offsets, n_from)."""
        return pair_affinities(self.features(levels), self.radius)

    def new_modules(self) -> list[nn.Module]:
        """The four 1×1 convs (DESIGN §1.3; as the reference, GroupNorm is not among them)."""
        return [self.f8_3, self.f8_4, self.f8_5, self.f9]


class SegHead(nn.Module):
    """DeepLab-LargeFOV's head (docs/design.md §1.6): a dilated 3×3 conv, ReLU and dropout
    (`seg6`), then a 1×1 conv to K + 1 classes (`seg8`), at stride 8.

    Args:
        in_channels: channels of the backbone's "conv6".
        num_classes: K + 1 (background included).
        dilation: rate of the 3×3 conv (DeepLab-LargeFOV: 12).
        channels: width of the 3×3 conv (DeepLab-LargeFOV: 1024).
        dropout: drop probability after the 3×3 conv.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilation: int,
        channels: int,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.seg6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.seg_drop = nn.Dropout2d(dropout)
        self.seg8 = nn.Conv2d(channels, num_classes, 1)
        _draw(nn.init.kaiming_normal_, self.seg6.weight, nonlinearity="relu")
        _draw(nn.init.zeros_, self.seg6.bias)
        _draw(nn.init.normal_, self.seg8.weight, std=0.01)  # DeepLab's classifier initialisation
        _draw(nn.init.zeros_, self.seg8.bias)

    def forward(self, feature: Tensor) -> Tensor:
        """feature: (B, C, h, w) → logits (B, K + 1, h, w) at stride 8."""
        return self.seg8(self.seg_drop(F.relu(self.seg6(feature))))

    def new_modules(self) -> list[nn.Module]:
        return [self.seg6, self.seg8]


# -- models -------------------------------------------------------------------


class PsaNet(nn.Module):
    """Backbone + head with PSA's freezing rules and the flat checkpoint layout.

    - Every BatchNorm stays in eval mode whatever `train(mode)` says, and its
      affine parameters never train; `backbone.frozen_modules()` never train.
    - `state_dict()` / `load_state_dict()` use the flat published layout (see
      the module docstring).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        clash = _top_level_names(backbone) & _top_level_names(head)
        if clash:
            raise ValueError(f"backbone and head both define {sorted(clash)}: names must differ")
        self.register_state_dict_post_hook(_flatten_state_dict)
        self.register_load_state_dict_pre_hook(_nest_state_dict)
        self.train(True)

    @property
    def normalization(self) -> Normalization:
        """The backbone's input normalisation (apply it to 0-255 RGB before `forward`)."""
        return self.backbone.normalization

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch (10× / 20× learning rate, docs/design.md §1.1)."""
        return self.head.new_modules()

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, 3, H, W) normalised → the backbone dict at stride 8."""
        return self.backbone(x)

    def train(self, mode: bool = True) -> PsaNet:
        super().train(mode)
        # Pretrained BatchNorm statistics stay frozen; a from-scratch backbone
        # (tiny) sets `trains_batchnorm` and keeps its BN layers training.
        trains_bn = getattr(self.backbone, "trains_batchnorm", False)
        for module in (self.head if trains_bn else self).modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
                for param in (module.weight, module.bias):
                    if param is not None:
                        param.requires_grad_(False)
        for module in self.backbone.frozen_modules():
            for param in module.parameters():
                param.requires_grad_(False)
        return self


class CAMNet(PsaNet):
    """Classification network: `forward(x)` → logits (B, K); `cam(x)` → (B, K, h, w)."""

    head: CAMHead

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised → multi-label logits (B, K)."""
        return self.head(self.backbone(x)["conv6"])

    def cam(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised → CAMs relu(fc8 · F) (B, K, ceil(H/8), ceil(W/8)).

        sqrt(relu(fc8 · F)) for vgg16d, see `CAMHead`.
        """
        return self.head.cam(self.backbone(x)["conv6"])


class AffinityNet(PsaNet):
    """AffinityNet: `features(x)` → (B, 448, h, w); `forward(x)` → (B, n_offsets, n_from)."""

    head: AffinityHead

    @property
    def radius(self) -> int:
        return self.head.radius

    def features(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised → affinity features f (B, 448, ceil(H/8), ceil(W/8))."""
        return self.head.features(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised → pair affinities (B, n_offsets, n_from), see psa_core.affinity."""
        return self.head(self.backbone(x))


class SegNet(PsaNet):
    """Segmentation network: `forward(x)` → logits (B, K + 1, H, W) at the input's size.

    `logits(x)` gives them at stride 8, (B, K + 1, ceil(H/8), ceil(W/8));
    `forward` upsamples those bilinearly (align_corners=False).
    """

    head: SegHead

    @property
    def num_classes(self) -> int:
        """K + 1: the background and the K classes."""
        return self.head.seg8.out_channels

    def logits(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised → logits (B, K + 1, h, w) at stride 8."""
        return self.head(self.backbone(x)["conv6"])

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised → logits (B, K + 1, H, W)."""
        return F.interpolate(
            self.logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False
        )


# -- flat checkpoint layout ---------------------------------------------------


def _top_level_names(module: nn.Module) -> set[str]:
    """First components of the module's state-dict keys."""
    return (
        {name for name, _ in module.named_children()}
        | set(module._parameters)
        | set(module._buffers)
    )


def _flatten_state_dict(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict
) -> None:
    """state_dict post-hook: `backbone.X` / `head.X` → `X`; BN counters dropped."""
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest.rsplit(".", 1)[-1] == BN_COUNTER:
                continue
            owner, _, inner = rest.partition(".")
            if owner in _SUBMODULES and inner:
                key = prefix + inner
        state_dict[key] = value


def _nest_state_dict(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """load_state_dict pre-hook: `X` → `backbone.X` / `head.X`; missing BN counters filled."""
    owners = {name: sub for sub in _SUBMODULES for name in _top_level_names(getattr(module, sub))}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        first = rest.partition(".")[0]
        if first in _SUBMODULES:
            continue
        if first in owners:
            state_dict[f"{prefix}{owners[first]}.{rest}"] = state_dict.pop(key)
    for name, child in module.named_modules():
        if (
            isinstance(child, nn.modules.batchnorm._BatchNorm)
            and child.num_batches_tracked is not None
        ):
            key = f"{prefix}{name}.{BN_COUNTER}"
            state_dict.setdefault(key, child.num_batches_tracked.detach().clone())
