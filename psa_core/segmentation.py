"""The segmentation network at work (docs/design.md §1.6): its training (dataset, loss,
`fit_seg`), multi-scale inference (`segment_images`), and the model folder that
`psa predict` reads.

The model contract is `psa_core.models.SegNet`: `model.normalization` maps a
(B, 3, H, W) float RGB tensor in [0, 255] to the network input and
`model.logits(x)` returns (B, K + 1, h, w) logits at stride 8, background first.

A model folder (what `package_seg_model` writes, what a user takes away) holds
`weights.pt` (the state dict) and `model.json`, which describes it: the format
tag `MODEL_FORMAT`, backbone and head dilation, the class names (background
first), the input normalisation, the inference defaults (scales, flip, CRF),
the weights' SHA-256, the psa_core version and the settings that made it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from psa_core import __version__, io
from psa_core.cam import check_image, model_device
from psa_core.constants import IGNORE_INDEX, voc_palette
from psa_core.data import image_paths
from psa_core.decoded_cache import DecodedCache
from psa_core.device import autocast_dtype
from psa_core.errors import PsaError
from psa_core.models import BACKBONES, create_model
from psa_core.settings import DatasetSettings, SegmentationInferSettings, SegmentationSettings
from psa_core.training import digest, sample_rng, train
from psa_core.transforms import (
    Normalization,
    SegTrainTransform,
    resize,
    to_size_of,
    to_working_size,
    training_transform,
)

MODEL_FORMAT = "psa-seg-model/1"
"""Tag of the model folder layout; a folder with another tag is refused."""

MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"

OVERLAY_ALPHA = 0.5
"""Weight of the class colour in an overlay (background pixels keep the image)."""


# -- training loss --------------------------------------------------------------


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is not `IGNORE_INDEX` (255).

    Args:
        logits: (B, K + 1, H, W) float.
        target: (B, H, W) integer class indices, 255 = ignore.

    Returns:
        A scalar: sum over labelled pixels of −log softmax(logits)[label],
        divided by their number; 0 (with a gradient) when every pixel is
        ignored, where `F.cross_entropy`'s mean would be NaN.
    """
    target = target.long()
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


# -- inference ------------------------------------------------------------------


def multiscale_softmax(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    scales: Sequence[float] = SegmentationInferSettings.scales,
    *,
    flip: bool = SegmentationInferSettings.flip,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Class probabilities averaged over scales and flips, for images of one size.

    For every scale s each image is resized with PIL bicubic to
    (round(W·s), round(H·s)) (as `psa_core.cam.multiscale_cam` does); it and,
    with `flip`, its mirror image go through `model.logits` together. Each
    view's logits are resized bilinearly (align_corners=False) to (H, W), the
    mirrored ones are mirrored back, softmax is taken over the classes, and
    the probabilities are averaged over all views.

    The model's train/eval mode is left as it is: call `model.eval()` first.

    Args:
        model: a `SegNet` (see the module docstring), on any device.
        images: N (H, W, 3) uint8 RGB images, all of the same size.
        scales: positive scale factors.
        flip: add the mirror image of every view.
        amp_dtype: autocast dtype of the forward passes; the fusion is float32.

    Returns:
        (N, K + 1, H, W) float32; each pixel's probabilities sum to 1.
    """
    if not len(images):
        raise PsaError("multiscale_softmax: no images")
    images = [check_image(image) for image in images]
    height, width = images[0].shape[:2]
    if any(image.shape[:2] != (height, width) for image in images):
        raise PsaError("multiscale_softmax: images of one call must share one size")
    scales = tuple(float(s) for s in scales)
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise PsaError(f"segmentation scales {scales}: need at least one positive, finite scale")
    device = model_device(model)
    pil_images = [Image.fromarray(image) for image in images]
    n = len(images)
    total = None
    with torch.inference_mode():
        for scale in scales:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            scaled = [
                np.asarray(img.resize(size, resample=Image.Resampling.BICUBIC))
                for img in pil_images
            ]
            x = torch.from_numpy(np.stack(scaled).transpose(0, 3, 1, 2).copy()).to(device)
            if flip:
                x = torch.cat((x, x.flip(-1)))
            x = model.normalization(x.float())
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model.logits(x)
            # one full-size (2N, K + 1, H, W) array at a time: the upsampled logits are
            # dropped once softmaxed, the views summed in place
            probs = F.interpolate(
                logits.float(), size=(height, width), mode="bilinear", align_corners=False
            ).softmax(dim=1)
            del logits
            views = probs[:n] + probs[n:].flip(-1) if flip else probs[:n]
            del probs
            if total is None:
                total = views
            else:
                total += views
        total /= len(scales) * (2 if flip else 1)
    return total.cpu().numpy()


def size_batches(
    images: Sequence[np.ndarray], batch_size: int, max_pixels: int | None = None
) -> Iterator[list[int]]:
    """Indices of runs of consecutive images of one size, at most `batch_size` long and,
    with `max_pixels`, at most that many pixels together (one image at least).

    `multiscale_softmax` takes one size per call; a list sorted by size
    batches best, any order gives the same probabilities.
    """
    if batch_size < 1:
        raise PsaError(f"batch size {batch_size}: must be at least 1")
    batch: list[int] = []
    for index, image in enumerate(images):
        pixels = (len(batch) + 1) * image.shape[0] * image.shape[1]
        full = len(batch) == batch_size or (max_pixels is not None and pixels > max_pixels)
        if batch and (full or image.shape != images[batch[0]].shape):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def probs_to_mask(probs: np.ndarray) -> np.ndarray:
    """(C, H, W) probabilities → (H, W) uint8 class indices (first maximum on ties)."""
    return np.asarray(probs).argmax(axis=0).astype(np.uint8)


BATCH_IMAGE_PIXELS = 512 * 512
"""Pixels an image of a full inference batch may have: `batch_size` VOC images (500 x 375)
share a pass, working-size photos (1024 x 768) go one at a time, so a pass's memory is
bounded by the batch size, not by the image size (docs/design.md §1.8)."""

OVERLAY_ROWS = 256
"""Rows blended at a time: the float32 temporaries of a 12-megapixel overlay stay ~12 MB."""


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The mask's VOC colours blended into the image (background and 255 keep the image).

    Blended in blocks of `OVERLAY_ROWS` rows, so the float copies never span the
    whole image (a full-size photo's overlay needs its uint8 output only).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    image, mask = np.asarray(image), np.asarray(mask, dtype=np.uint8)
    palette = np.asarray(voc_palette(), dtype=np.float32).reshape(256, 3)
    out = np.empty(image.shape, dtype=np.uint8)
    for top in range(0, image.shape[0], OVERLAY_ROWS):
        rows = slice(top, top + OVERLAY_ROWS)
        pixels, labels = image[rows].astype(np.float32), mask[rows]
        blended = (1 - alpha) * pixels + alpha * palette[labels]
        shown = (labels != 0) & (labels != IGNORE_INDEX)
        mixed = np.where(shown[..., None], blended, pixels)
        out[rows] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return out


# -- the model folder -------------------------------------------------------------


def write_model_description(
    folder: str | os.PathLike,
    *,
    backbone: str,
    dilation: int,
    classes: Sequence[str],
    normalization: Any,
    infer: SegmentationInferSettings,
    settings: Mapping[str, Any],
    max_side: int | None = DatasetSettings.max_side,
) -> Path:
    """Write `folder/model.json` for the weights already at `folder/weights.pt`.

    Args:
        classes: the K foreground class names (the file lists background first).
        normalization: the model's `psa_core.transforms.Normalization`.
        max_side: the longest side it segments at (`dataset.max_side`; None = no
            limit), recorded as `input.max_side`.
        infer: the inference defaults recorded (scales, flip, CRF).
        settings: what made the model (training options, upstream config).
    """
    folder = Path(folder)
    description = {
        "format": MODEL_FORMAT,
        "psa_core_version": __version__,
        "backbone": backbone,
        "head": {"kind": "deeplab-largefov", "dilation": int(dilation)},
        "classes": ["background", *classes],
        "input": {
            "colour": "RGB, uint8 0-255",
            "mean": list(normalization.mean),
            "std": list(normalization.std),
            "bgr": bool(normalization.bgr),
            "max_side": None if max_side is None else int(max_side),
        },
        "inference": {
            "scales": [float(s) for s in infer.scales],
            "flip": bool(infer.flip),
            "crf": bool(infer.crf),
        },
        "weights": {"file": WEIGHTS_FILE, "sha256": io.file_sha256(folder / WEIGHTS_FILE)},
        "settings": dict(settings),
    }
    path = folder / MODEL_FILE
    io.write_json(path, description)
    return path


def read_model_description(folder: str | os.PathLike) -> dict[str, Any]:
    """`folder/model.json`, checked to be a model folder of this format."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PsaError(
            f"{folder}: model folder not found; pass the folder package_seg_model wrote (<output_dir>/seg/model)"
        )
    path = folder / MODEL_FILE
    if not path.is_file():
        raise PsaError(
            f"{folder}: not a segmentation model folder (no {MODEL_FILE}); pass the folder "
            "package_seg_model wrote (<output_dir>/seg/model)"
        )
    description = io.read_json(path)
    found = description.get("format") if isinstance(description, dict) else None
    if found != MODEL_FORMAT:
        version = description.get("psa_core_version", "?") if isinstance(description, dict) else "?"
        raise PsaError(
            f"{path}: model format '{found}' (psa_core {version}), but this psa_core "
            f"{__version__} reads '{MODEL_FORMAT}'; use the psa_core version that wrote it or "
            "retrain the model"
        )
    problem = description_problem(description)
    if problem:
        raise PsaError(
            f"{path}: {problem}; the file is damaged: copy the model folder again, or rerun "
            "package_seg_model"
        )
    return description


_NUMBERS3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["backbone", "head", "classes", "input", "inference", "weights"],
    "properties": {
        "backbone": {"enum": list(BACKBONES)},
        "head": {
            "type": "object",
            "required": ["dilation"],
            "properties": {"dilation": {"type": "integer", "minimum": 1}},
        },
        "classes": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "input": {
            "type": "object",
            "required": ["mean", "std", "bgr"],
            "properties": {
                "mean": _NUMBERS3,
                "std": _NUMBERS3,
                "bgr": {"type": "boolean"},
                "max_side": {"type": ["integer", "null"], "minimum": 1},
            },
        },
        "inference": {
            "type": "object",
            "required": ["scales", "flip", "crf"],
            "properties": {
                "scales": {"type": "array", "items": {"type": "number"}, "minItems": 1},
                "flip": {"type": "boolean"},
                "crf": {"type": "boolean"},
            },
        },
        "weights": {
            "type": "object",
            "required": ["file", "sha256"],
            "properties": {"file": {"type": "string"}, "sha256": {"type": "string"}},
        },
    },
}
"""What `read_model_description` requires of model.json: every key a reader uses, typed."""


def description_problem(description: Mapping[str, Any]) -> str | None:
    """The first key of a model description that is missing or of the wrong type, in
    words, or None."""
    import jsonschema

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(MODEL_SCHEMA).iter_errors(description)
    )
    if error is None:
        return None
    key = ".".join(str(p) for p in error.absolute_path)
    return f"key '{key}': {error.message}" if key else error.message


def recorded_max_side(description: Mapping[str, Any]) -> int | None:
    """The longest side a model folder's network segments at (`input.max_side`); a folder
    written before that key existed gets the default, `DatasetSettings.max_side`."""
    recorded = description["input"]
    return recorded.get("max_side", DatasetSettings.max_side)


def load_model_folder(
    folder: str | os.PathLike, device: str = "auto"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The segmentation model of a model folder, in eval mode on `device`, and its description.

    The weights must match the recorded SHA-256 and load strictly; the
    recorded input normalisation must be the backbone's.
    """
    folder = Path(folder)
    description = read_model_description(folder)
    weights = folder / description["weights"]["file"]
    if not weights.is_file():
        raise PsaError(f"{weights}: weights file not found; copy the whole model folder")
    if io.file_sha256(weights) != description["weights"]["sha256"]:
        raise PsaError(
            f"{weights}: does not match the SHA-256 in {folder / MODEL_FILE}; the folder mixes "
            "files of two models: copy the folder package_seg_model wrote as a whole"
        )
    model = create_model(
        description["backbone"],
        "seg",
        len(description["classes"]) - 1,
        checkpoint_path=weights,
        device=device,
        dilation=description["head"]["dilation"],
    )
    recorded = description["input"]
    normalization = Normalization(
        mean=tuple(recorded["mean"]), std=tuple(recorded["std"]), bgr=recorded["bgr"]
    )
    if normalization != model.normalization:
        raise PsaError(
            f"{folder / MODEL_FILE}: input normalisation {normalization} differs from the "
            f"{description['backbone']} backbone's {model.normalization}; the file is damaged"
        )
    return model, description


# -- training data, loss and fit ----------------------------------------------------


class SegTrainDataset(Dataset):
    """Augmented images and their masks (palette PNGs, 255 ignored) for the segmentation network.

    A mask at an image's working size (docs/design.md §1.8) gets the image
    scaled to it; any other size is a PsaError.

    Keys are `(epoch, index)`; sample `index` of `epoch` is augmented with
    `sample_rng(seed, epoch, index)` (`SegTrainTransform`). Decoded images
    and masks are kept in a `DecodedCache` of `cache_mb` MB (0 = off).

    Items: (image (3, crop, crop) float32 normalised, mask (crop, crop) int64).
    """

    def __init__(
        self,
        images: str | os.PathLike | Mapping[str, Path],
        names: Sequence[str],
        masks: str | os.PathLike,
        transform: SegTrainTransform,
        seed: int,
        cache_mb: float = 0,
    ):
        if not names:
            raise PsaError("training set: the image list is empty; check the split")
        self.names = list(names)
        self.paths = image_paths(images, self.names)
        self.mask_paths = [Path(masks) / f"{name}.png" for name in self.names]
        missing = [p for p in self.mask_paths if not p.is_file()]
        if missing:
            raise PsaError(
                f"{missing[0]}: mask not found ({len(missing)} missing in {masks}); rerun "
                "export_masks for the training split"
            )
        self.transform = transform
        self.seed = seed
        self.cache = DecodedCache(len(self.names), cache_mb)

    def __len__(self) -> int:
        return len(self.names)

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image `index` at its mask's size (H, W, 3) uint8 and the mask (H, W) uint8: the
        part of a sample no epoch changes."""
        full = io.read_image(self.paths[index])
        mask = io.read_mask(self.mask_paths[index])
        image = to_size_of(full, mask.shape)  # pseudo masks are at the working size (§1.8)
        if image is None:
            raise PsaError(
                f"{self.mask_paths[index]}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                f"is {full.shape[1]}x{full.shape[0]}; the masks come from another dataset"
            )
        return image, mask

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, mask = self.cache.get(index, self.decode)
        x, mask = self.transform(image, mask, sample_rng(self.seed, epoch, index))
        return torch.from_numpy(x), torch.from_numpy(mask.astype(np.int64))

    def fingerprint(self) -> dict[str, Any]:
        """What makes the data of a run: names, the masks' bytes, augmentation, seed."""
        return {
            "kind": "segmentation",
            "num_images": len(self.names),
            "names": digest(self.names),
            "masks": digest([io.file_sha256(p) for p in self.mask_paths]),
            "transform": dataclasses.asdict(self.transform),
            "seed": self.seed,
        }


def segmentation_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pixel cross-entropy of the upsampled logits, 255 ignored (docs/design.md §1.6)."""
    images, masks = batch
    return pixel_cross_entropy(model(images), masks), {}


def fit_seg(
    model: nn.Module,
    images: str | os.PathLike | Mapping[str, Path],
    names: Sequence[str],
    masks: str | os.PathLike,
    settings: SegmentationSettings,
    *,
    seed: int = 0,
    **loop: Any,
) -> dict[str, Any]:
    """Train the segmentation network of docs/design.md §1.6 on the shared loop.

    Args:
        model: `create_model(backbone, "seg", K)`, initial weights loaded.
        images: name -> image file (`psa_core.data.listed_files`), or a dataset folder in
            the VOC layout (root/JPEGImages/NAME.jpg).
        names: training images; masks: folder of NAME.png class-index masks.
        settings: the `segmentation` section (defaults: DeepLab-LargeFOV's solver).
        seed: data order, augmentation, dropout.
        loop: the other keywords of `psa_core.training.train`.
    """
    transform = training_transform(SegTrainTransform, model.normalization, settings)
    dataset = SegTrainDataset(images, names, masks, transform, seed, settings.image_cache_mb)
    return train(model, dataset, segmentation_loss, settings, seed=seed, **loop)


# -- inference over image files -------------------------------------------------------


def segment_images(
    model: nn.Module,
    paths: Sequence[Path],
    infer: SegmentationInferSettings,
    *,
    max_side: int | None = None,
    amp: str = "none",
    progress: bool = False,
) -> Iterable[tuple[Path, np.ndarray, np.ndarray]]:
    """Yield (path, image, mask) for every image, in order.

    `infer` (the `segmentation.infer` section) gives the scales, the flip and
    the batch size: images of one size go through the network together, up to
    `infer.batch_size` a pass and `infer.batch_size · BATCH_IMAGE_PIXELS` pixels
    (`size_batches`; the probabilities do not depend on the batching). With `infer.crf` each image's probabilities are refined by the dense CRF
    (`psa_core.crf.crf_inference`, PSA's kernels) before the argmax.

    An image whose longest side exceeds `max_side` (None: no limit) is
    segmented at its working size (`psa_core.transforms.working_size`,
    docs/design.md §1.8) and its label map scaled back by nearest neighbour:
    no (K + 1, H, W) float array at the original size is ever made.

    Yields:
        path; image: (h, w, 3) uint8, what the network saw (the image itself
        when it fits max_side); mask: (H, W) uint8 at the image's original size.
    """
    from psa_core.crf import crf_inference

    scales, flip, crf, batch_size = infer.scales, infer.flip, infer.crf, infer.batch_size
    amp_dtype = autocast_dtype(amp)
    bar = _progress_bar(len(paths), progress)
    window = max(batch_size, 1) * 8  # images read ahead to find equal sizes
    try:
        for first in range(0, len(paths), window):
            chunk = list(paths[first : first + window])
            images, sizes = [], []
            for path in chunk:  # one full-size image in memory at a time
                image = io.read_image(path)
                sizes.append(image.shape[:2])
                images.append(to_working_size(image, max_side))
                del image
            order = sorted(range(len(chunk)), key=lambda i: images[i].shape)
            masks: dict[int, np.ndarray] = {}
            by_size = [images[i] for i in order]
            for batch in size_batches(by_size, batch_size, batch_size * BATCH_IMAGE_PIXELS):
                picked = [order[i] for i in batch]
                probs = multiscale_softmax(
                    model, [images[i] for i in picked], scales, flip=flip, amp_dtype=amp_dtype
                )
                for i, p in zip(picked, probs, strict=True):
                    masks[i] = probs_to_mask(crf_inference(images[i], p) if crf else p)
            for i, path in enumerate(chunk):
                mask = masks.pop(i)
                if mask.shape != sizes[i]:
                    mask = resize(mask, sizes[i], "nearest")
                yield path, images[i], mask
                bar.update(1)
    finally:
        bar.close()


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, file=sys.stderr, mininterval=1.0)
