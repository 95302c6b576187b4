"""The classification network's side of PSA (docs/design.md §1.1): its training (datasets,
loss, `fit_cam`) and its class activation maps at inference (multi-scale fusion, CAM
segmentation).

The model contract: `model.normalization` maps a
(B, 3, H, W) float RGB tensor in [0, 255] to the network input, and
`model.cam(x)` returns (B, K, h, w) ReLU class activation maps at stride 8.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from psa_core import io
from psa_core.constants import BACKGROUND_INDEX
from psa_core.data import check_names, image_paths
from psa_core.decoded_cache import DecodedCache
from psa_core.errors import PsaError
from psa_core.metrics import top_class
from psa_core.settings import CamInferSettings, CamSettings
from psa_core.training import digest, sample_rng, train
from psa_core.transforms import (
    CamTrainTransform,
    CenterCropTransform,
    training_transform,
)

DEFAULT_SCALES: tuple[float, ...] = CamInferSettings.scales
"""Published inference scales (docs/design.md §1.1); each also runs flipped."""

NORM_EPS = 1e-5
"""Added to each class map's max before dividing (published value)."""


def multiscale_cam(
    model: torch.nn.Module,
    image: np.ndarray,
    label: np.ndarray,
    scales: Sequence[float] = DEFAULT_SCALES,
    *,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Fused multi-scale, flip-augmented CAMs of one image (docs/design.md §1.1).

    For every scale s the original image is resized with PIL bicubic to
    (round(W·s), round(H·s)) (Python's `round`, as in the published code),
    and the image and its horizontal flip go through `model.cam` as one batch
    of two. Each map is resized bilinearly (align_corners=False) to (H, W),
    the flipped one is flipped back, the maps are summed over all views and
    multiplied by `label`, and each class map is divided by its own max + 1e-5.

    Only the present classes' maps are upsampled and summed; multiplying by a
    0/1 label afterwards is the same as masking every view.

    The model's train/eval mode is left as it is: call `model.eval()` first.

    Args:
        model: CAM model following the contract in the module docstring; it
            runs on the device of its parameters.
        image: (H, W, 3) uint8 RGB.
        label: (K,) image-level labels, 0/1 (bool, int or float).
        scales: positive scale factors.
        amp_dtype: autocast dtype for the forward passes (e.g.
            `torch.bfloat16` on a GPU); the fusion is always float32.

    Returns:
        (K, H, W) float32: present classes in [0, 1] (max ≈ 1 unless the map
        is all zero), absent classes exactly 0. With no present class the
        model is not run and the result is all zero.
    """
    image = check_image(image)
    present = _check_label(label)
    scales = tuple(float(s) for s in scales)
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise PsaError(f"CAM scales {scales}: need at least one positive, finite scale")
    height, width = image.shape[:2]
    num_classes = present.shape[0]
    cams = np.zeros((num_classes, height, width), dtype=np.float32)
    present_ids = np.flatnonzero(present)
    if present_ids.size == 0:
        return cams

    device = model_device(model)
    pil_image = Image.fromarray(image)
    with torch.inference_mode():
        select = torch.as_tensor(present_ids, device=device)
        total = torch.zeros((present_ids.size, height, width), dtype=torch.float32, device=device)
        for scale in scales:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            scaled = np.asarray(pil_image.resize(size, resample=Image.Resampling.BICUBIC))
            x = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1))).to(device)
            pair = model.normalization(torch.stack((x, x.flip(-1))).float())
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model.cam(pair)
            if out.ndim != 4 or out.shape[:2] != (2, num_classes):
                raise PsaError(
                    f"model.cam returned shape {tuple(out.shape)} but the label has "
                    f"{num_classes} classes; use a model built with num_classes={num_classes}"
                )
            out = out.index_select(1, select).float()
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
            total += out[0] + out[1].flip(-1)
        total /= total.amax(dim=(1, 2), keepdim=True) + NORM_EPS
    cams[present_ids] = total.cpu().numpy()
    return cams


def cams_to_segmentation(
    cams: np.ndarray, class_ids: np.ndarray, bg_threshold: float
) -> np.ndarray:
    """CAMs as a segmentation: argmax over [constant background, class maps].

    docs/design.md §1.1. A pixel is background where no class map exceeds
    `bg_threshold` (a tie goes to background, as `np.argmax` over the stack
    with background first would decide). The comparison is made in float32,
    as the published code does with its float32 background plane.

    Args:
        cams: (C, H, W) float maps of the present classes only (C may be 0).
        class_ids: (C,) 0-based class ids of the maps.
        bg_threshold: constant background score (0.2 published).

    Returns:
        (H, W) uint8: BACKGROUND_INDEX (0) or class id + 1.
    """
    top_score, top_index = top_class(cams, class_ids)
    threshold = np.float32(bg_threshold)
    return np.where(top_score > threshold, top_index, np.uint8(BACKGROUND_INDEX)).astype(np.uint8)


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` as a contiguous (H, W, 3) uint8 RGB array; PsaError for anything else."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PsaError(
            f"image has shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8 RGB"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise PsaError(f"image has shape {image.shape}; it is empty")
    return np.ascontiguousarray(image)


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 1:
        raise PsaError(f"label has shape {label.shape}; expected (K,) of 0/1")
    values = label.astype(np.float64)
    if not np.all((values == 0) | (values == 1)):
        raise PsaError(f"label {label.tolist()}: values must be 0 or 1")
    return values == 1


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for an empty model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# -- training data, loss and fit ------------------------------------------------


class _LabelledImages(Dataset):
    """Image paths and (K,) float32 labels of a list of names, checked up front, and the
    transform that makes a network input of an image."""

    what = "image set"

    def __init__(
        self,
        images: str | os.PathLike | Mapping[str, Path],
        names: Sequence[str],
        labels: Mapping[str, np.ndarray],
        transform: Any,
    ):
        check_names(names, labels, self.what)
        self.names = list(names)
        self.paths = image_paths(images, self.names)
        self.labels = [np.asarray(labels[n], dtype=np.float32) for n in self.names]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)


class CamTrainDataset(_LabelledImages):
    """Augmented images and image-level labels for CAM training.

    Keys are `(epoch, index)`; sample `index` of `epoch` is augmented by the
    `CamTrainTransform` with `sample_rng(seed, epoch, index)`. Decoded images
    are kept in a `DecodedCache` of `cache_mb` MB (0 = off) across epochs.

    Items: (image (3, crop, crop) float32 normalised, label (K,) float32).
    """

    what = "training set"

    def __init__(
        self,
        images: str | os.PathLike | Mapping[str, Path],
        names: Sequence[str],
        labels: Mapping[str, np.ndarray],
        transform: CamTrainTransform,
        seed: int,
        cache_mb: float = 0,
    ) -> None:
        super().__init__(images, names, labels, transform)
        self.seed = seed
        self.cache = DecodedCache(len(self.names), cache_mb)

    def decode(self, index: int) -> tuple[np.ndarray]:
        """Image `index` as read, (H, W, 3) uint8: the part of a sample no epoch changes."""
        return (io.read_image(self.paths[index]),)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        (image,) = self.cache.get(index, self.decode)
        x = self.transform(image, sample_rng(self.seed, epoch, index))
        return torch.from_numpy(x), torch.from_numpy(self.labels[index])

    def fingerprint(self) -> dict[str, Any]:
        """What makes the data of a run: names, labels, augmentation, seed."""
        return {
            "kind": "cam",
            "num_images": len(self.names),
            "names": digest(self.names),
            "labels": digest([lab.tolist() for lab in self.labels]),
            "transform": dataclasses.asdict(self.transform),
            "seed": self.seed,
        }


class CamEvalDataset(_LabelledImages):
    """Validation images for the CAM loss, through a `CenterCropTransform` (no augmentation).

    Keys are plain indices. Items as in `CamTrainDataset`.
    """

    what = "validation set"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.transform(io.read_image(self.paths[index]))
        return torch.from_numpy(x), torch.from_numpy(self.labels[index])


def multilabel_soft_margin_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The CAM loss (docs/design.md §1.1): multi-label soft margin on the K logits.

    batch: (images (B, 3, H, W) float32, labels (B, K) float32 of 0/1).
    """
    images, labels = batch
    logits = model(images)
    return F.multilabel_soft_margin_loss(logits.float(), labels.float()), {}


def fit_cam(
    model: nn.Module,
    images: str | os.PathLike | Mapping[str, Path],
    names: Sequence[str],
    labels: Mapping[str, np.ndarray],
    settings: CamSettings,
    *,
    seed: int = 0,
    val_names: Sequence[str] | None = None,
    val_crop_size: int | None = None,
    **loop: Any,
) -> dict[str, Any]:
    """Train the classification network of docs/design.md §1.1 on the shared loop.

    Args:
        model: a CAM model (`create_model(backbone, "cam", K)`), initial
            weights loaded; `model.normalization` is its input convention.
        images: name -> image file (`psa_core.data.listed_files`), or a dataset folder in
            the VOC layout (root/JPEGImages/NAME.jpg).
        names: training image names; labels: name -> (K,) 0/1 array (every
            training and validation name must be present).
        settings: the `cam` section (optimiser, augmentation; defaults published).
        seed: data order, augmentation, dropout.
        val_names: optional validation images; their loss on a centred
            `val_crop_size` window (default the crop size) is logged per epoch.
        loop: the other keywords of `psa_core.training.train` (out_weights,
            checkpoint_path, log_csv, device, …).
    """
    transform = training_transform(CamTrainTransform, model.normalization, settings)
    dataset = CamTrainDataset(images, names, labels, transform, seed, settings.image_cache_mb)
    val_dataset = None
    if val_names:
        crop_size = val_crop_size or settings.crop_size
        val_dataset = CamEvalDataset(
            images, val_names, labels, CenterCropTransform(model.normalization, crop_size)
        )
    before_step = _wide_field_warmup(model, settings.wide_field_share)
    return train(
        model,
        dataset,
        multilabel_soft_margin_loss,
        settings,
        seed=seed,
        val_dataset=val_dataset,
        before_step=before_step,
        **loop,
    )


def _wide_field_warmup(model: nn.Module, share: float) -> Any:
    """`cam.wide_field_share`: a `before_step` that runs the tiny backbone's blocks 5 and 6
    dilated for the first `share` of the steps and undilated after; None for share 0.

    Measured (benchmarks/RESULTS.md, "a wide-field warm-up"): from scratch, a family
    told only by a fine pattern learned with it where the 111 px net stays at chance,
    but not at every schedule length, and one draw of a colour-coded family lost its
    CAMs' place; so it is off by default. The dilation is a function of the step
    alone, so a resumed run picks up the same schedule.
    """
    if share == 0:
        return None
    backbone = getattr(model, "backbone", None)
    if not hasattr(backbone, "set_dilations"):
        raise PsaError(
            f"cam.wide_field_share {share}: only the tiny backbone has a wide-field warm-up; "
            "set it to 0 for this backbone"
        )
    narrow = backbone.dilations  # as built: (1, 1) for tiny

    def before_step(step: int, total: int) -> None:
        backbone.set_dilations(backbone.WIDE_DILATIONS if step < share * total else narrow)

    return before_step
