"""A small residual CNN at stride 8 for CPU runs (demo, synthetic data, tests).

Not part of PSA: it stands in for ResNet-38 where no GPU and no ImageNet
weights are at hand, and trains from scratch. Its BatchNorm layers therefore
train (`trains_batchnorm = True`), unlike the published backbones whose
ImageNet statistics stay frozen. Two alternatives were measured on the
synthetic set and dropped: GroupNorm lets a sample's part response shift the
normalisation of every background pixel, and the classifier learned that
global shortcut (CAMs bright on the background, dark on the objects); with no
normalisation at all, SGD stayed at the chance-level loss.

Its receptive field is 111 px (blocks 5 and 6 undilated). With the dilations
2 and 4 of ResNet-38's last stages it was 239 px, wider than the 100-200 px
images it trains on: every CAM cell then saw the whole image, and a classifier
trained from scratch spread a class's evidence over cells that merely see the
object, background and image borders included. On two dataset families the
undilated blocks raised val CAM mIoU by 11-20 points at threshold 0.2 and the
CAM mass on the object from 21-43 % to 40-64 % (benchmarks/RESULTS.md,
"Robustness suite"). ImageNet-initialised backbones learn locality from their
weights and keep the published dilations.

The narrow field has a cost: from scratch it did not learn classes told only by a
fine pattern on small objects, which a wider field learnt for some schedules.
`set_dilations` lets the classifier's training start wide and finish narrow
(`cam.wide_field_share`, psa_core.cam, off by default); the weights are the same
tensors at either dilation.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from psa_core.errors import PsaError
from psa_core.transforms import IMAGENET_NORMALIZATION


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _conv_norm_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """Two dilated 3×3 conv-BN layers plus a (projected when needed) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = _norm(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _norm(cout))
            if cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class TinyNet(nn.Module):
    """Backbone: (B, 3, H, W) ImageNet-normalised RGB → stride-8 features.

    Three stride-2 conv-BN-ReLU layers (width/2, width, width) and a residual
    block give "conv4" (width channels); two more residual blocks, at
    `dilations` (default 1 and 1, undilated: see the module docstring), give "conv5"
    (2·width) and "conv6" (4·width). Grid ceil(H / 8) × ceil(W / 8).
    """

    normalization = IMAGENET_NORMALIZATION
    trains_batchnorm = True

    def __init__(self, width: int = 32, dilations: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        if width < 8 or width % 8:
            raise PsaError(
                f"tiny backbone width {width}: use a positive multiple of 8 (default 32)"
            )
        self.out_channels = {"conv4": width, "conv5": 2 * width, "conv6": 4 * width}
        self.stem = nn.Sequential(
            _conv_norm_relu(3, width // 2, stride=2),
            _conv_norm_relu(width // 2, width, stride=2),
            _conv_norm_relu(width, width, stride=2),
        )
        self.block4 = BasicBlock(width, width)
        self.block5 = BasicBlock(width, 2 * width)
        self.block6 = BasicBlock(2 * width, 4 * width)
        self.set_dilations(dilations)

    WIDE_DILATIONS = (2, 4)
    """Dilations of blocks 5 and 6 for `set_dilations` during a wide-field warm-up (239 px
    field: ResNet-38's last stages)."""

    @property
    def dilations(self) -> tuple[int, int]:
        """The current dilations of blocks 5 and 6."""
        return self.block5.conv1.dilation[0], self.block6.conv1.dilation[0]

    def set_dilations(self, dilations: tuple[int, int]) -> None:
        """Run blocks 5 and 6 at these dilations from now on. The weights do not change
        (a 3×3 kernel is the same at any dilation), so the state dict is the same."""
        for block, dilation in zip((self.block5, self.block6), dilations, strict=True):
            for conv in (block.conv1, block.conv2):
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)

    def frozen_modules(self) -> list[nn.Module]:
        """None: the tiny net trains from scratch."""
        return []

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        conv4 = self.block4(self.stem(x))
        conv5 = self.block5(conv4)
        return {"conv4": conv4, "conv5": conv5, "conv6": self.block6(conv5)}


def tiny(width: int = 32, dilations: tuple[int, int] = (1, 1)) -> TinyNet:
    """The small CPU backbone; `width` channels at conv4, 2·width at conv5, 4·width at conv6;
    `dilations` of the conv5 and conv6 blocks."""
    return TinyNet(width=width, dilations=dilations)
