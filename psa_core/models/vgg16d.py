"""VGG-16 made dense at stride 8, as in PSA's `network/vgg16d.py` (DeepLab-LargeFOV style).

pool4 has stride 1, conv5_x are dilated by 2, and the first fully connected
layer becomes a 3×3 convolution with 1024 filters (`fc6`, dilation
`fc6_dilation`), followed by a 1×1 `fc7` with 1024 filters. Like the reference,
there is no pool5 before fc6. Pooling uses 3×3 windows with padding 1, so the
output grid is ceil(H / 8) × ceil(W / 8).

The reference uses fc6 dilation 1 in the classification network and 4 in the
affinity network; `psa_core.models.build_model` applies those defaults.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from psa_core.transforms import CAFFE_VGG_NORMALIZATION

# (name, in, out, dilation) per conv layer; a pool follows the last conv of each group.
_CONV_GROUPS: tuple[tuple[tuple[str, int, int, int], ...], ...] = (
    (("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1)),
    (("conv2_1", 64, 128, 1), ("conv2_2", 128, 128, 1)),
    (("conv3_1", 128, 256, 1), ("conv3_2", 256, 256, 1), ("conv3_3", 256, 256, 1)),
    (("conv4_1", 256, 512, 1), ("conv4_2", 512, 512, 1), ("conv4_3", 512, 512, 1)),
    (("conv5_1", 512, 512, 2), ("conv5_2", 512, 512, 2), ("conv5_3", 512, 512, 2)),
)
_POOL_STRIDES = (2, 2, 2, 1)  # after groups 1-4; stride 8 in all
CONV_NAMES: tuple[str, ...] = tuple(name for group in _CONV_GROUPS for name, *_ in group)
"""The 13 VGG-16 convolutions in order (torchvision `features` order)."""


class VGG16d(nn.Module):
    """Backbone: (B, 3, H, W) Caffe-normalised BGR → stride-8 features.

    `forward` returns {"conv4": (B, 512, h, w) relu(conv4_3), "conv5": (B, 512, h, w)
    relu(conv5_3), "conv6": (B, 1024, h, w) relu(fc7)}; dropout 0.5 between fc6
    and fc7 in training.
    """

    normalization = CAFFE_VGG_NORMALIZATION

    def __init__(self, fc6_dilation: int = 1) -> None:
        super().__init__()
        self.out_channels = {"conv4": 512, "conv5": 512, "conv6": 1024}
        self.fc6_dilation = fc6_dilation
        for group in _CONV_GROUPS:
            for name, cin, cout, dilation in group:
                self.add_module(name, nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation))
        self.pools = nn.ModuleList(nn.MaxPool2d(3, stride=s, padding=1) for s in _POOL_STRIDES)
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.drop6 = nn.Dropout2d(0.5)
        self.fc7 = nn.Conv2d(1024, 1024, 1)

    def frozen_modules(self) -> list[nn.Module]:
        """The first two conv groups keep their ImageNet weights (PSA's `not_training`)."""
        return [self.conv1_1, self.conv1_2, self.conv2_1, self.conv2_2]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features: dict[str, Tensor] = {}
        for index, group in enumerate(_CONV_GROUPS):
            for name, *_ in group:
                x = F.relu(getattr(self, name)(x))
            if index == 3:
                features["conv4"] = x
            if index < len(self.pools):
                x = self.pools[index](x)
        features["conv5"] = x
        x = self.drop6(F.relu(self.fc6(x)))
        features["conv6"] = F.relu(self.fc7(x))
        return features


def vgg16d(fc6_dilation: int = 1) -> VGG16d:
    """The VGG-16 backbone of PSA; `fc6_dilation` is 1 (CAM) or 4 (affinity) in the reference."""
    return VGG16d(fc6_dilation=fc6_dilation)
