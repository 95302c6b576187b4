"""Wide ResNet-38 (model A1 of Wu, Shen & van den Hengel, 2016), dilated to stride 8.

Pre-activation residual blocks: each block starts with BN + ReLU on its input,
and that activation is also what the projection shortcut sees. Stages 5-7 keep
the stride at 8 and dilate instead (2, 4, 4), as in PSA's `network/resnet38d.py`.
Attribute names (`conv1a`, `b4_3.bn_branch2b1`, `bn7`, …) are those of the
published PSA checkpoints and the MXNet ImageNet model's converter, so weights
load by name (see `psa_core.models.weights`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from psa_core.transforms import IMAGENET_NORMALIZATION


class PreActBlock(nn.Module):
    """Two 3×3 convs on BN-ReLU'd input; a 1×1 projection when the shape changes."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.project = in_channels != out_channels or stride != 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels,
            mid_channels,
            3,
            stride,
            padding=first_dilation,
            dilation=first_dilation,
            bias=False,
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(
            mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        if self.project:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (block output, the block's BN-ReLU'd input)."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(pre) if self.project else x
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y, pre


class PreActBottleneck(nn.Module):
    """1×1 → dilated 3×3 → 1×1 (widths out/4, out/2, out) with channel dropout; always projects."""

    def __init__(
        self, in_channels: int, out_channels: int, dilation: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        quarter, half = out_channels // 4, out_channels // 2
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, quarter, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(quarter)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            quarter, half, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(half)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(half, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (block output, the block's BN-ReLU'd input)."""
        pre = F.relu(self.bn_branch2a(x))
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return self.conv_branch1(pre) + y, pre


# (name, in, mid, out, stride, first_dilation, dilation) of the basic blocks, stages 2-5.
_BASIC_BLOCKS: tuple[tuple[str, int, int, int, int, int | None, int], ...] = (
    ("b2", 64, 128, 128, 2, None, 1),
    ("b2_1", 128, 128, 128, 1, None, 1),
    ("b2_2", 128, 128, 128, 1, None, 1),
    ("b3", 128, 256, 256, 2, None, 1),
    ("b3_1", 256, 256, 256, 1, None, 1),
    ("b3_2", 256, 256, 256, 1, None, 1),
    ("b4", 256, 512, 512, 2, None, 1),
    ("b4_1", 512, 512, 512, 1, None, 1),
    ("b4_2", 512, 512, 512, 1, None, 1),
    ("b4_3", 512, 512, 512, 1, None, 1),
    ("b4_4", 512, 512, 512, 1, None, 1),
    ("b4_5", 512, 512, 512, 1, None, 1),
    ("b5", 512, 512, 1024, 1, 1, 2),
    ("b5_1", 1024, 512, 1024, 1, None, 2),
    ("b5_2", 1024, 512, 1024, 1, None, 2),
)


class ResNet38d(nn.Module):
    """Backbone: (B, 3, H, W) ImageNet-normalised RGB → stride-8 features.

    `forward` returns {"conv4": (B, 512, h, w) the BN-ReLU'd input of b5,
    "conv5": (B, 1024, h, w) that of b6, "conv6": (B, 4096, h, w) relu(bn7(b7))},
    h = ceil(H / 8), w = ceil(W / 8).
    """

    normalization = IMAGENET_NORMALIZATION

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = {"conv4": 512, "conv5": 1024, "conv6": 4096}
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        for name, cin, cmid, cout, stride, first_dilation, dilation in _BASIC_BLOCKS:
            block = PreActBlock(cin, cmid, cout, stride, first_dilation, dilation)
            self.add_module(name, block)
        self.b6 = PreActBottleneck(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = PreActBottleneck(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and stage 2 keep their ImageNet weights (PSA's `not_training`)."""
        return [self.conv1a, self.b2, self.b2_1, self.b2_2]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.conv1a(x)
        features: dict[str, Tensor] = {}
        for name, *_ in _BASIC_BLOCKS:
            x, pre = getattr(self, name)(x)
            if name == "b5":
                features["conv4"] = pre
        x, features["conv5"] = self.b6(x)
        x, _ = self.b7(x)
        features["conv6"] = F.relu(self.bn7(x))
        return features


def resnet38d() -> ResNet38d:
    """The ResNet-38 backbone of PSA (no options)."""
    return ResNet38d()


__all__ = ["PreActBlock", "PreActBottleneck", "ResNet38d", "resnet38d"]
