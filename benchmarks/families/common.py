"""What every dataset family shares: coverage maps, backgrounds, placement and the VOC writer.

A family draws one sample at a time (`Sample`: image, mask, objects) from its own
`numpy.random.Generator`; `write_dataset` writes the samples in the PASCAL VOC
layout that `psa_core.data.voc` reads (JPEGImages/, SegmentationClass/ palette
PNGs, Annotations/ XML, ImageSets/Segmentation/{train,val}.txt, classes.txt).

Shapes are described by a signed distance (px, negative inside) over a window
of the image; `coverage` turns it into an anti-aliased (or hard) alpha map.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from psa_core import io
from psa_core.constants import BACKGROUND_INDEX, IGNORE_INDEX
from psa_core.data.voc import (
    ANNOTATION_DIR,
    ANNOTATION_SUFFIX,
    IMAGE_DIR,
    IMAGE_SUFFIX,
    LIST_DIR,
    MASK_DIR,
    MASK_SUFFIX,
)

CLASSES: tuple[str, ...] = ("bird", "cat", "dog", "person")
"""Class names in label order (mask index c + 1); names of VOC classes, the pictures are abstract."""

SPLITS: tuple[str, ...] = ("train", "val")

COVERED = 0.5
"""Alpha from which a pixel belongs to the shape in the mask."""

JPEG_QUALITY = (85, 96)
"""Range of the JPEG quality drawn per image (upper bound excluded)."""


@dataclass(frozen=True)
class VocObject:
    """One `<object>` of a VOC annotation; the box in VOC's 1-based inclusive pixels."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    truncated: bool


@dataclass(frozen=True)
class Sample:
    """image: (H, W, 3) uint8 RGB; mask: (H, W) uint8 (0 background, c + 1, 255 void)."""

    image: np.ndarray
    mask: np.ndarray
    objects: list[VocObject]


@dataclass(frozen=True)
class Window:
    """A rectangle of the image and its pixel-centre coordinates relative to a point.

    rows, cols: the slices; x, y: (h, w) float32 offsets from the point (px).
    """

    rows: slice
    cols: slice
    x: np.ndarray
    y: np.ndarray

    def rotated(self, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """The coordinates in a frame turned by `angle` (radians)."""
        c, s = np.cos(angle), np.sin(angle)
        return c * self.x + s * self.y, -s * self.x + c * self.y


def window(height: int, width: int, cx: float, cy: float, radius: float) -> Window | None:
    """The part of an image (height, width) within `radius` (+2 px) of (cx, cy); None if empty."""
    r = radius + 2.0
    top, bottom = max(0, int(np.floor(cy - r))), min(height, int(np.ceil(cy + r)) + 1)
    left, right = max(0, int(np.floor(cx - r))), min(width, int(np.ceil(cx + r)) + 1)
    if top >= bottom or left >= right:
        return None
    y, x = np.mgrid[top:bottom, left:right].astype(np.float32)
    return Window(slice(top, bottom), slice(left, right), x - np.float32(cx), y - np.float32(cy))


def coverage(sdf: np.ndarray, antialias: bool = True) -> np.ndarray:
    """Alpha (float32 in [0, 1]) of a shape from its signed distance (px, negative inside):
    a one-pixel linear ramp across the edge, or a hard step."""
    if antialias:
        return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    return (sdf <= 0).astype(np.float32)


def box_sdf(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    """Signed distance to an axis-aligned rectangle centred at 0."""
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def ellipse_sdf(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an ellipse with half-axes a (x) and b (y)."""
    return (np.hypot(x / a, y / b) - 1.0) * min(a, b)


def polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon, vertices (N, 2) as (x, y)."""
    dist2 = np.full(x.shape, np.inf, dtype=np.float32)
    sign = np.ones(x.shape, dtype=np.float32)
    n = len(vertices)
    for i in range(n):
        vx, vy = vertices[i]
        ux, uy = vertices[i - 1]
        ex, ey = ux - vx, uy - vy
        wx, wy = x - vx, y - vy
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        dist2 = np.minimum(dist2, bx * bx + by * by)
        # even-odd rule: flip where a ray to the right crosses this edge
        c1, c2, c3 = y >= vy, y < uy, ex * wy > ey * wx
        sign[(c1 & c2 & c3) | (~c1 & ~c2 & ~c3)] *= -1
    return sign * np.sqrt(dist2)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(height, width) float32 in [0, 1]: `cells` random values across the longer side,
    interpolated bicubically (a smooth random field)."""
    scale = max(height, width) / max(cells, 1)
    small_h, small_w = max(2, round(height / scale) + 2), max(2, round(width / scale) + 2)
    small = rng.random((small_h, small_w), dtype=np.float32)
    field = np.asarray(
        Image.fromarray(small, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    )
    low, high = float(field.min()), float(field.max())
    return ((field - low) / max(high - low, 1e-6)).astype(np.float32)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB in [0, 255]."""
    return rng.uniform(0, 255, size=3).astype(np.float32)


def luminance(colour: np.ndarray) -> float:
    return float(colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def gradient(
    height: int, width: int, angle: float, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """(height, width, 3) float32: a linear blend from colour `start` to `end` along `angle`."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = x * np.cos(angle) + y * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return start * (1 - t[..., None]) + end * t[..., None]


def paint(image: np.ndarray, win: Window, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Blend `colour` ((3,) or (h, w, 3)) over `image` (float32, in place) with `alpha` (h, w)."""
    region = image[win.rows, win.cols]
    a = alpha[..., None]
    region[...] = region * (1 - a) + colour * a


@dataclass
class Placed:
    """A shape on the instance map: its window and alpha, and the id it holds there
    (0 for a distractor on top of the objects)."""

    win: Window
    alpha: np.ndarray
    instance: int


class Layout:
    """The instance map (H, W) of an image while its objects are placed, with the check
    that every object stays visible: a new object needs `min_pixels` inside the image,
    and nothing placed later may leave an earlier one fewer than `min_pixels` or
    `min_fraction` of the pixels it had when placed."""

    def __init__(self, height: int, width: int, min_pixels: int, min_fraction: float) -> None:
        self.instance = np.zeros((height, width), dtype=np.int16)
        self.areas: dict[int, int] = {}
        self.min_pixels = min_pixels
        self.min_fraction = min_fraction

    def try_place(self, placed: Placed) -> bool:
        """Put `placed` on top if every object stays visible enough; else leave the map as is."""
        region = self.instance[placed.win.rows, placed.win.cols]
        inside = placed.alpha >= COVERED
        area = int(inside.sum())
        if placed.instance and area < self.min_pixels:
            return False
        hidden = np.bincount(region[inside].ravel(), minlength=len(self.areas) + 1)
        for index, full in self.areas.items():
            remaining = self.visible(index) - int(hidden[index])
            if remaining < max(self.min_pixels, self.min_fraction * full):
                return False
        region[inside] = placed.instance
        if placed.instance:
            self.areas[placed.instance] = area
        return True

    def visible(self, index: int) -> int:
        return int((self.instance == index).sum())


def paint_on_top(
    image: np.ndarray,
    layout: Layout,
    draw: Callable[[], tuple | None],
    colour: Callable[[tuple], np.ndarray],
    tries: int,
) -> None:
    """One distractor over the objects: up to `tries` calls of `draw()` (a (window, alpha,
    ...) tuple or None); the first that leaves every object visible enough is placed on
    `layout` as id 0 and painted with `colour(item)`."""
    for _ in range(tries):
        item = draw()
        if item is not None and layout.try_place(Placed(item[0], item[1], 0)):
            paint(image, item[0], item[1], colour(item))
            return


def border_centre(
    rng: np.random.Generator, height: int, width: int, radius: float, at_border: bool
) -> tuple[float, float]:
    """An object centre: well inside the image, or (at_border) so that an object of
    `radius` crosses one edge (its centre between 0.35 radius outside and 0.8 inside)."""
    if not at_border:
        margin_x = min(radius + 1.5, width / 2)
        margin_y = min(radius + 1.5, height / 2)
        return rng.uniform(margin_x, width - margin_x), rng.uniform(margin_y, height - margin_y)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    depth = rng.uniform(-0.35, 0.8) * radius
    side = rng.integers(4)
    if side == 0:
        cx = depth
    elif side == 1:
        cx = width - depth
    elif side == 2:
        cy = depth
    else:
        cy = height - depth
    return float(cx), float(cy)


def void_boundaries(mask: np.ndarray) -> np.ndarray:
    """The mask with `IGNORE_INDEX` on both sides of every label change (a 2 px band, as
    VOC's annotators leave a void band along object outlines)."""
    out = mask.copy()
    change = np.zeros(mask.shape, dtype=bool)
    vertical = mask[1:] != mask[:-1]
    horizontal = mask[:, 1:] != mask[:, :-1]
    change[1:] |= vertical
    change[:-1] |= vertical
    change[:, 1:] |= horizontal
    change[:, :-1] |= horizontal
    out[change] = IGNORE_INDEX
    return out


def finish_sample(
    image: np.ndarray,
    instance: np.ndarray,
    classes_of: list[int],
    classes: tuple[str, ...] = CLASSES,
    void_band: bool = False,
) -> Sample:
    """The mask, boxes and labels of a drawn image.

    Args:
        image: (H, W, 3) float, clipped to uint8 here.
        instance: (H, W) int, 0 background, i for object i (1-based).
        classes_of: the 0-based class of object i at index i - 1.
        void_band: mark `void_boundaries` with 255.
    """
    lookup = np.array([BACKGROUND_INDEX, *(c + 1 for c in classes_of)], dtype=np.uint8)
    mask = lookup[instance]
    if void_band:
        mask = void_boundaries(mask)
    height, width = instance.shape
    objects = []
    for index, cls in enumerate(classes_of, start=1):
        rows, cols = np.nonzero((instance == index) & (mask != IGNORE_INDEX))
        if rows.size == 0:
            raise AssertionError(f"object {index} is hidden; the layout check should prevent it")
        top, bottom = int(rows.min()), int(rows.max())
        left, right = int(cols.min()), int(cols.max())
        cut = top == 0 or left == 0 or bottom == height - 1 or right == width - 1
        objects.append(VocObject(classes[cls], left + 1, top + 1, right + 1, bottom + 1, bool(cut)))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Sample(pixels, mask, objects)


def annotation_xml(name: str, width: int, height: int, objects: list[VocObject]) -> str:
    """A VOC annotation (`<annotation>` with folder, filename, size and one `<object>` each)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{name}{IMAGE_SUFFIX}"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for key in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(box, key).text = str(getattr(obj, key))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_dataset(
    root: str | os.PathLike,
    seed: int,
    counts: dict[str, int],
    draw: Callable[[np.random.Generator], Sample],
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Draw and write a dataset in the VOC layout; `root` is replaced whole, atomically.

    Image i of split s (index j in `counts`) comes from `default_rng([seed, j, i])`:
    the same seed gives the same files, whatever the other split's size. Names are
    `SPLIT_NNNN`.
    """
    root = Path(root)
    with io.atomic_dir(root) as tmp:
        for split_index, (split, count) in enumerate(counts.items()):
            names = []
            for i in range(count):
                name = f"{split}_{i:04d}"
                sample = draw(np.random.default_rng([seed, split_index, i]))
                quality = int(
                    np.random.default_rng([seed, split_index, i, 1]).integers(*JPEG_QUALITY)
                )
                height, width = sample.mask.shape
                io.write_image(tmp / IMAGE_DIR / f"{name}{IMAGE_SUFFIX}", sample.image, quality)
                io.write_mask(tmp / MASK_DIR / f"{name}{MASK_SUFFIX}", sample.mask)
                xml = annotation_xml(name, width, height, sample.objects)
                (tmp / ANNOTATION_DIR).mkdir(exist_ok=True)
                (tmp / ANNOTATION_DIR / f"{name}{ANNOTATION_SUFFIX}").write_text(xml)
                names.append(name)
            io.write_lines(tmp / LIST_DIR / f"{split}.txt", names)
        io.write_lines(tmp / "classes.txt", list(classes))
    return root
