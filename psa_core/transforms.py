"""Image transforms written with numpy / PIL / torch (no torchvision).

`Normalization` is each backbone's input convention; training augmentation
and inference both go through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Normalization:
    """Per-channel `(x - mean) / std` on 0-255 RGB input, optionally to BGR.

    `mean` and `std` are given in RGB order on the 0-255 scale. With
    `bgr=True` the channels are reversed after normalising (Caffe-style VGG).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False

    def numpy(self, image: np.ndarray) -> np.ndarray:
        """image: (H, W, 3) uint8 or float RGB -> (3, H, W) float32."""
        x = (np.asarray(image, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) float RGB in [0, 255] -> normalised, same shape."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        x = (images - mean) / std
        return x.flip(1) if self.bgr else x


IMAGENET_NORMALIZATION = Normalization(
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255), std=(0.229 * 255, 0.224 * 255, 0.225 * 255)
)
"""ImageNet statistics, used by ResNet-38 and the small CPU backbone."""

CAFFE_VGG_NORMALIZATION = Normalization(mean=(122.675, 116.669, 104.008), bgr=True)
"""DeepLab / Caffe VGG-16: RGB means subtracted, then BGR order, no scaling."""
