"""Image transforms written with numpy / PIL / torch (no torchvision).

`Normalization` is each backbone's input convention; training augmentation
and inference both go through it. The training augmentation of docs/design.md
§1.1 follows below as pure functions of an explicit `np.random.Generator`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageEnhance

from psa_core.constants import IGNORE_INDEX
from psa_core.errors import PsaError
from psa_core.settings import CamSettings, ColorJitter, TrainSettings

if TYPE_CHECKING:
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
        import torch  # here: the evaluation jobs resize with this module, without torch

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


# -- training augmentation (docs/design.md §1.1) ----------------------------------
#
# Pure functions: every random choice comes from an explicit
# `np.random.Generator`, so a sample's augmentation is a function of its seed.
# Spatial functions take arrays whose first two axes are (H, W): images
# (H, W, 3) uint8, label maps (H, W), score stacks (H, W, C) (move the channel
# axis of a (C, H, W) stack last with `np.moveaxis(scores, 0, -1)`). The
# random ones take a list of arrays of the same (H, W) and apply one draw to
# all of them, so image, scores and labels stay aligned.

CROP_SIZE = CamSettings.crop_size
"""Side of the square training crop."""

RESIZE_LONG = CamSettings.resize_long
"""Range (inclusive) of the long side after the random resize."""

COLOR_JITTER = ColorJitter().as_tuple()
"""Brightness, contrast, saturation, hue strengths of the colour jitter."""

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def _per_array(value: Any, count: int, what: str) -> list[Any]:
    """Broadcast one option to `count` arrays, or check a per-array sequence."""
    if isinstance(value, str) or np.isscalar(value):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{what}: {len(values)} values for {count} arrays")
    return values


def long_side_size(size_hw: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(H, W) scaled so that max(H, W) == long_side, aspect kept (rounded)."""
    h, w = size_hw
    if w < h:
        return long_side, max(1, round(w * long_side / h))
    return max(1, round(h * long_side / w)), long_side


def resize(
    array: np.ndarray, size_hw: tuple[int, int], interpolation: str = "bilinear"
) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array to `size_hw` with PIL.

    Args:
        array: uint8 images go through PIL in 8 bits (an (H, W, 3) one as RGB);
            any other dtype goes channel by channel as float32 ("F" mode) and
            is cast back, so integer label maps stay exact with "nearest".
        size_hw: target (height, width).
        interpolation: "nearest", "bilinear" or "bicubic" (PIL's filters,
            antialiased when shrinking).

    Returns:
        (h, w) or (h, w, C) array of the input dtype.
    """
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"interpolation '{interpolation}': use one of {sorted(_PIL_FILTERS)}")
    array = np.asarray(array)
    h, w = int(size_hw[0]), int(size_hw[1])
    if array.shape[:2] == (h, w):
        return array.copy()
    resample = _PIL_FILTERS[interpolation]
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return np.asarray(Image.fromarray(array, mode="RGB").resize((w, h), resample=resample))
    planes = array.reshape(*array.shape[:2], -1)
    work = np.uint8 if array.dtype == np.uint8 else np.float32
    out = np.empty((h, w, planes.shape[2]), dtype=array.dtype)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=work))
        out[..., c] = np.asarray(plane.resize((w, h), resample=resample))
    return out.reshape(h, w, *array.shape[2:])


# -- working size (docs/design.md §1.8) -------------------------------------------------
#
# An image whose longest side exceeds `dataset.max_side` is processed scaled down
# to its working size; the CAMs and everything made from them (CRF stacks, walk
# scores, pseudo masks) are stored at that size. A stage that reads an image
# with such an artifact brings the image (or its ground truth) to the artifact's
# size with `to_size_of`, after checking that the artifact is the image's own
# size or a scaling of it (`is_scaling_of`), so that no stage needs max_side to
# read what another stage wrote.


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) at which the pipeline processes an (height, width) image.

    The image's own size when its longest side is at most `max_side` (or
    `max_side` is None: no limit); else the size whose longest side is
    `max_side`, aspect kept (`long_side_size`, rounded).
    """
    if max_side is None or max(height, width) <= max_side:
        return int(height), int(width)
    return long_side_size((int(height), int(width)), int(max_side))


def is_scaling_of(size_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    """Whether `size_hw` is the (H, W) `image_hw` itself or its working size for some
    max_side below the longest side: `working_size(*image_hw, max(size_hw)) == size_hw`."""
    h, w = int(size_hw[0]), int(size_hw[1])
    return working_size(int(image_hw[0]), int(image_hw[1]), max(h, w)) == (h, w)


def to_working_size(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image at its working size (`working_size`): the image itself
    (no copy) when it fits, else scaled down with PIL bilinear, antialiased."""
    size_hw = working_size(*image.shape[:2], max_side)
    return image if size_hw == image.shape[:2] else _writable(resize(image, size_hw, "bilinear"))


def to_size_of(
    array: np.ndarray, size_hw: tuple[int, int], interpolation: str = "bilinear"
) -> np.ndarray | None:
    """`array` (H, W[, C]) at an artifact's size `size_hw`, or None when that size is
    neither (H, W) nor a scaling of it (the caller says which files disagree).

    The array itself (no copy) when the sizes match; else resized with PIL,
    "bilinear" for an image (as `to_working_size` made the artifact's input),
    "nearest" for a label mask.
    """
    size_hw = (int(size_hw[0]), int(size_hw[1]))
    if tuple(array.shape[:2]) == size_hw:
        return array
    if not is_scaling_of(size_hw, array.shape[:2]):
        return None
    return _writable(resize(array, size_hw, interpolation))


def _writable(array: np.ndarray) -> np.ndarray:
    """`array`, copied if read-only (PIL's buffers are; torch warns on those)."""
    return array if array.flags.writeable else array.copy()


def random_resize_long(
    arrays: Sequence[np.ndarray],
    lo: int,
    hi: int,
    *,
    rng: np.random.Generator,
    interpolations: str | Sequence[str] = "bicubic",
) -> list[np.ndarray]:
    """Resize all arrays so their long side is one random integer in [lo, hi].

    The reference's `RandomResizeLong` (PIL bicubic for images); give score
    maps "bilinear" and label maps "nearest" via `interpolations`.
    """
    if not 0 < lo <= hi:
        raise ValueError(f"resize range ({lo}, {hi}): need 0 < lo <= hi")
    long_side = int(rng.integers(lo, hi + 1))
    size_hw = long_side_size(arrays[0].shape[:2], long_side)
    modes = _per_array(interpolations, len(arrays), "interpolations")
    return [resize(a, size_hw, mode) for a, mode in zip(arrays, modes, strict=True)]


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror the W axis (axis 1) of an (H, W, ...) array; a contiguous copy."""
    return np.ascontiguousarray(np.asarray(array)[:, ::-1])


def random_hflip(
    arrays: Sequence[np.ndarray], *, rng: np.random.Generator, p: float = 0.5
) -> list[np.ndarray]:
    """Mirror all arrays horizontally with probability `p` (one draw for all)."""
    if rng.random() < p:
        return [hflip(a) for a in arrays]
    return [np.asarray(a) for a in arrays]


def _jitter_brightness(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(factor)


def _jitter_contrast(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(factor)


def _jitter_saturation(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(factor)


def _jitter_hue(img: Image.Image, factor: float) -> Image.Image:
    # torchvision's PIL path: rotate the 8-bit hue channel of HSV, wrapping.
    h, s, v = img.convert("HSV").split()
    shift = int(factor * 255)
    hue = ((np.asarray(h, dtype=np.int16) + shift) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(hue, mode="L"), s, v)).convert("RGB")


def color_jitter(
    image: np.ndarray,
    *,
    rng: np.random.Generator,
    brightness: float = COLOR_JITTER[0],
    contrast: float = COLOR_JITTER[1],
    saturation: float = COLOR_JITTER[2],
    hue: float = COLOR_JITTER[3],
) -> np.ndarray:
    """torchvision's `ColorJitter` on an (H, W, 3) uint8 RGB image.

    Brightness, contrast and saturation factors are uniform in
    [max(0, 1 - s), 1 + s] (PIL `ImageEnhance`: blend with black, the mean
    grey, the greyscale image); the hue shift is uniform in [-hue, hue] turns
    of the HSV hue. The four run in a random order; a strength of 0 skips its
    operation, so all-zero strengths return the image unchanged.

    Returns:
        (H, W, 3) uint8.
    """
    if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
        raise ValueError(
            f"color jitter ({brightness}, {contrast}, {saturation}, {hue}): strengths must be "
            ">= 0 and hue <= 0.5"
        )
    # Always draw the order and all four factors so the stream does not
    # depend on which strengths are zero.
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1.0 - s), 1.0 + s) for s in (brightness, contrast, saturation)]
    factors.append(rng.uniform(-hue, hue))
    ops = [
        (brightness, _jitter_brightness),
        (contrast, _jitter_contrast),
        (saturation, _jitter_saturation),
        (hue, _jitter_hue),
    ]
    img = Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB")
    for i in order:
        strength, op = ops[i]
        if strength > 0:
            img = op(img, float(factors[i]))
    return np.asarray(img, dtype=np.uint8).copy()


@dataclass(frozen=True)
class CropBox:
    """A crop window: the source region and where it lands in the output.

    The output is (out_h, out_w); rows [dst_top, dst_top + height) and columns
    [dst_left, dst_left + width) receive the source rows [src_top, ...) and
    columns [src_left, ...); the rest is padding.
    """

    src_top: int
    src_left: int
    dst_top: int
    dst_left: int
    height: int
    width: int
    out_h: int
    out_w: int


def _crop_axis(rng: np.random.Generator | None, size: int, crop: int) -> tuple[int, int, int]:
    """(src offset, dst offset, extent) along one axis; centred when rng is None."""
    space = size - crop
    if space > 0:
        offset = int(rng.integers(space + 1)) if rng is not None else round(space / 2)
        return offset, 0, crop
    offset = int(rng.integers(-space + 1)) if rng is not None else round(-space / 2)
    return 0, offset, size


def _as_hw(crop: int | tuple[int, int]) -> tuple[int, int]:
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    if ch <= 0 or cw <= 0:
        raise ValueError(f"crop size {crop}: must be positive")
    return int(ch), int(cw)


def random_crop_box(
    size_hw: tuple[int, int], crop: int | tuple[int, int], *, rng: np.random.Generator
) -> CropBox:
    """The reference's random crop: a random window where the image is larger
    than `crop`, the whole image at a random place in the output where smaller.
    """
    ch, cw = _as_hw(crop)
    sy, dy, eh = _crop_axis(rng, size_hw[0], ch)
    sx, dx, ew = _crop_axis(rng, size_hw[1], cw)
    return CropBox(sy, sx, dy, dx, eh, ew, ch, cw)


def center_crop_box(size_hw: tuple[int, int], crop: int | tuple[int, int]) -> CropBox:
    """A centred window (the reference's `CenterCrop`), padded where smaller."""
    ch, cw = _as_hw(crop)
    sy, dy, eh = _crop_axis(None, size_hw[0], ch)
    sx, dx, ew = _crop_axis(None, size_hw[1], cw)
    return CropBox(sy, sx, dy, dx, eh, ew, ch, cw)


def crop(array: np.ndarray, box: CropBox, pad_value: float = 0) -> np.ndarray:
    """Cut `box` out of an (H, W, ...) array; outside the image is `pad_value`.

    Returns:
        (box.out_h, box.out_w, ...) array of the input dtype.
    """
    array = np.asarray(array)
    out = np.full((box.out_h, box.out_w, *array.shape[2:]), pad_value, dtype=array.dtype)
    out[box.dst_top : box.dst_top + box.height, box.dst_left : box.dst_left + box.width] = array[
        box.src_top : box.src_top + box.height, box.src_left : box.src_left + box.width
    ]
    return out


def random_crop(
    arrays: Sequence[np.ndarray],
    crop_size: int | tuple[int, int],
    *,
    rng: np.random.Generator,
    pad_values: float | Sequence[float] = 0,
) -> list[np.ndarray]:
    """Crop all arrays with one random box (`random_crop_box` of the first).

    `pad_values`: per array, e.g. (0, IGNORE_INDEX) for an image and its labels.
    """
    box = random_crop_box(arrays[0].shape[:2], crop_size, rng=rng)
    pads = _per_array(pad_values, len(arrays), "pad_values")
    return [crop(a, box, pad) for a, pad in zip(arrays, pads, strict=True)]


@dataclass(frozen=True)
class _ResizeFlipJitterCrop:
    """The settings shared by the CAM and segmentation augmentations (see below).

    `resize_long=None` skips the resize; `color_jitter` is (brightness,
    contrast, saturation, hue).
    """

    normalization: Normalization
    crop_size: int = CROP_SIZE
    resize_long: tuple[int, int] | None = RESIZE_LONG
    flip: bool = True
    color_jitter: tuple[float, float, float, float] = COLOR_JITTER

    def __post_init__(self) -> None:
        _as_hw(self.crop_size)
        if self.resize_long is not None and not 0 < self.resize_long[0] <= self.resize_long[1]:
            raise ValueError(f"resize_long {self.resize_long}: need 0 < lo <= hi")
        if len(self.color_jitter) != 4:
            raise ValueError(f"color_jitter {self.color_jitter}: need 4 values")


@dataclass(frozen=True)
class CamTrainTransform(_ResizeFlipJitterCrop):
    """The CAM stage's training augmentation (docs/design.md §1.1), in the
    reference's order: random resize of the long side, horizontal flip,
    colour jitter, normalise, random crop with zero padding (after
    normalising, so padding is the mean colour).
    """

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB -> (3, crop_size, crop_size) float32."""
        if self.resize_long is not None:
            (image,) = random_resize_long([image], *self.resize_long, rng=rng)
        if self.flip:
            (image,) = random_hflip([image], rng=rng)
        b, c, s, h = self.color_jitter
        image = color_jitter(image, rng=rng, brightness=b, contrast=c, saturation=s, hue=h)
        x = self.normalization.numpy(image).transpose(1, 2, 0)
        (x,) = random_crop([x], self.crop_size, rng=rng, pad_values=0.0)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


@dataclass(frozen=True)
class CenterCropTransform:
    """The CAM stage's validation input (the reference's `CenterCrop`): normalise, then a
    centred `crop_size` window, zero padded where the image is smaller (the mean colour)."""

    normalization: Normalization
    crop_size: int = CROP_SIZE

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB -> (3, crop_size, crop_size) float32."""
        x = self.normalization.numpy(image).transpose(1, 2, 0)
        x = crop(x, center_crop_box(x.shape[:2], self.crop_size), 0.0)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


@dataclass(frozen=True)
class AffinityTrainTransform:
    """The affinity stage's training augmentation (docs/design.md §1.2, §1.3).

    The reference's `VOC12AffDataset` order: colour jitter on the image; one
    random crop of image and score stacks together, zero padded (before
    normalising, so the image padding is black and the score padding is 0,
    which `psa_core.affinity.crf_label_map` reads as "outside the image");
    normalise; one horizontal flip of both. No random resize.

    `color_jitter` is (brightness, contrast, saturation, hue).
    """

    normalization: Normalization
    crop_size: int = CROP_SIZE
    flip: bool = True
    color_jitter: tuple[float, float, float, float] = COLOR_JITTER

    def __post_init__(self) -> None:
        _as_hw(self.crop_size)
        if len(self.color_jitter) != 4:
            raise ValueError(f"color_jitter {self.color_jitter}: need 4 values")

    def __call__(
        self, image: np.ndarray, scores: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample; every random choice comes from `rng`.

        Args:
            image: (H, W, 3) uint8 RGB.
            scores: (H, W, S) float scores aligned with the image, e.g. the
                la and ha stacks concatenated along the last axis.
            rng: the sample's generator.

        Returns:
            x: (3, crop_size, crop_size) float32, the normalised image.
            scores: (crop_size, crop_size, S) float32, 0 outside the image.
        """
        image = np.asarray(image)
        scores = np.asarray(scores, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image has shape {image.shape}; expected (H, W, 3) RGB")
        if scores.ndim != 3 or scores.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"scores have shape {scores.shape}; expected (H, W, S) with the image's "
                f"(H, W) = {image.shape[:2]}"
            )
        b, c, s, h = self.color_jitter
        image = color_jitter(image, rng=rng, brightness=b, contrast=c, saturation=s, hue=h)
        image, scores = random_crop([image, scores], self.crop_size, rng=rng, pad_values=(0, 0.0))
        x = self.normalization.numpy(image).transpose(1, 2, 0)
        if self.flip:
            x, scores = random_hflip([x, scores], rng=rng)
        return np.ascontiguousarray(x.transpose(2, 0, 1)), np.ascontiguousarray(scores)


@dataclass(frozen=True)
class SegTrainTransform(_ResizeFlipJitterCrop):
    """The segmentation network's training augmentation (docs/design.md §1.6).

    The CAM stage's order, with the mask carried along: random resize of the
    long side (bicubic image, nearest mask), horizontal flip, colour jitter
    (image only), normalise, one random crop of both, the image padded with 0
    (the mean colour) and the mask with `IGNORE_INDEX`.
    """

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """image: (H, W, 3) uint8 RGB, mask: (H, W) uint8 class indices (255 = ignore)
        → (3, crop, crop) float32 and (crop, crop) uint8."""
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask is {mask.shape} but the image is {image.shape[:2]}")
        if self.resize_long is not None:
            image, mask = random_resize_long(
                [image, mask], *self.resize_long, rng=rng, interpolations=("bicubic", "nearest")
            )
        if self.flip:
            image, mask = random_hflip([image, mask], rng=rng)
        b, c, s, h = self.color_jitter
        image = color_jitter(image, rng=rng, brightness=b, contrast=c, saturation=s, hue=h)
        x = self.normalization.numpy(image).transpose(1, 2, 0)
        x, mask = random_crop([x, mask], self.crop_size, rng=rng, pad_values=(0.0, IGNORE_INDEX))
        return np.ascontiguousarray(x.transpose(2, 0, 1)), np.ascontiguousarray(mask)


def training_transform(
    transform_class: type, normalization: Normalization, settings: TrainSettings
) -> Any:
    """The augmentation `transform_class` (`CamTrainTransform`, …) of a training section.

    Takes the crop size, the colour jitter and, where the transform has one,
    the random resize from `settings`; a value the transform refuses is a
    PsaError naming it.
    """
    values: dict[str, Any] = {
        "crop_size": int(settings.crop_size),
        "flip": bool(settings.flip),
        "color_jitter": tuple(float(v) for v in settings.color_jitter.as_tuple()),
    }
    if "resize_long" in {f.name for f in dataclasses.fields(transform_class)}:
        low, high = settings.resize_long
        values["resize_long"] = (int(low), int(high))
    try:
        return transform_class(normalization=normalization, **values)
    except ValueError as exc:
        raise PsaError(f"training augmentation: {exc}") from None
