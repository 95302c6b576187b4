"""Synthetic dataset in the VOC layout: the default, CPU-sized demo data (docs/design.md §2).

Why it looks like this: PSA exists because a classifier's CAM lights up only
the most discriminative part of an object, and AffinityNet's random walk has
to spread that seed over the rest of the object, up to its boundary. The
images here are built so that this gap is real and measurable:

- Object = a large *body* plus a small *part*. Bodies are smooth blobs
  (ellipses with low-order radial harmonics) filled with a grainy, shaded
  texture whose colour is drawn from one class-agnostic distribution (dark,
  low saturation) for every class. The part (10-20 % of the body's area, an
  ellipse off the body's centre) is the only class evidence: a saturated
  class colour striped or checkered with a dark shade of itself, in a pattern
  fixed per class (`PART_STYLES`). So the CAM covers mainly the part, while
  the GT mask covers body and part.
- Bodies are darker than the (light, low-saturation, smoothly varying and
  grainy) background, so object boundaries are visible and pixel affinities
  can be learned from them.
- Clutter that carries no class: *decoys* (part-less bodies from the same
  body distribution, labelled background, some wearing a fake part in a
  distractor colour or in the style of a class not in use) and small
  distractor shapes (discs, boxes, triangles, bars) in mid-saturation colours
  that no class part uses. A classifier has to look at the parts.
- 1-3 objects of 1-2 classes per image; objects may overlap (a later one
  occludes an earlier one, but never most of it nor much of its part) and
  cross the image border (their parts stay mostly inside). Every image has
  at least one object.
- GT masks (train and val): object pixels (body and part) get class index
  c + 1, background 0, and a void (255) band of `void_width` pixels on each
  side of every object boundary, as in VOC. Labels in the XML annotations and
  masks agree: an object whose pixels are all void is left out of both.

Everything is a pure function of (seed, image index): image i uses
`np.random.default_rng([seed, i])`, so the same seed gives byte-identical
files, and changing `num_val` leaves the training images unchanged. Drawing is
vectorised numpy over coordinate grids (no per-pixel Python loops).
"""

from __future__ import annotations

import colorsys
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from psa_core import io
from psa_core.constants import BACKGROUND_INDEX, IGNORE_INDEX
from psa_core.data.index import CLASSES_FILE
from psa_core.data.voc import (
    ANNOTATION_DIR,
    IMAGE_DIR,
    LIST_DIR,
    MASK_DIR,
    annotation_path,
    image_path,
)
from psa_core.errors import PsaError
from psa_core.settings import SyntheticSettings

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "ruby",
    "emerald",
    "sapphire",
    "topaz",
    "amethyst",
    "turquoise",
    "amber",
    "rose",
)
"""Class names; `num_classes = n` uses the first n."""

PART_STYLES: dict[str, tuple[tuple[int, int, int], str]] = {
    "ruby": ((225, 25, 30), "hstripes"),
    "emerald": ((25, 195, 60), "vstripes"),
    "sapphire": ((35, 75, 240), "checker"),
    "topaz": ((240, 210, 25), "dstripes"),
    "amethyst": ((165, 45, 225), "checker"),
    "turquoise": ((25, 205, 205), "hstripes"),
    "amber": ((250, 130, 10), "vstripes"),
    "rose": ((235, 45, 160), "dstripes"),
}
"""Per class: the part's RGB colour (saturation >= 0.85) and its pattern."""

STRIPE_WIDTH = 3
"""Width in pixels of one stripe / checker square of a part pattern."""

_DARK_SHADE = 0.35
"""Dark stripes of a part are the class colour times this."""

_BODY_SATURATION = (0.05, 0.35)
_BODY_VALUE = (0.18, 0.42)
_BACKGROUND_SATURATION = (0.0, 0.3)
_BACKGROUND_VALUE = (0.62, 0.9)
_DISTRACTOR_SATURATION = (0.3, 0.6)
_DISTRACTOR_VALUE = (0.45, 0.95)


@dataclass(frozen=True)
class SyntheticObject:
    """One annotated object: 0-based class id, VOC bbox (1-based, inclusive), flags."""

    class_id: int
    bbox: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax
    truncated: bool
    occluded: bool


@dataclass
class SyntheticImage:
    """image: (H, W, 3) uint8 RGB; mask: (H, W) uint8; labels: (K,) uint8."""

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    objects: list[SyntheticObject] = field(default_factory=list)


@dataclass(frozen=True)
class _Blob:
    """A star-convex shape: an ellipse whose radius varies with harmonics 2, 3, 4."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    amplitudes: tuple[float, ...] = (0.0, 0.0, 0.0)
    phases: tuple[float, ...] = (0.0, 0.0, 0.0)

    def mask(self, yy: np.ndarray, xx: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """(H, W) bool for grids yy (H, 1), xx (1, W); `grow` pixels are added to both radii."""
        out = np.zeros((yy.shape[0], xx.shape[1]), dtype=bool)
        reach = (max(self.rx, self.ry) + grow) * (1.0 + sum(self.amplitudes)) + 1.0
        y0, x0 = max(0, math.floor(self.cy - reach)), max(0, math.floor(self.cx - reach))
        y1 = min(out.shape[0], math.ceil(self.cy + reach) + 1)
        x1 = min(out.shape[1], math.ceil(self.cx + reach) + 1)
        if y0 < y1 and x0 < x1:
            out[y0:y1, x0:x1] = self._inside(yy[y0:y1], xx[:, x0:x1], grow)
        return out

    def _inside(self, yy: np.ndarray, xx: np.ndarray, grow: float) -> np.ndarray:
        dy, dx = yy - self.cy, xx - self.cx
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        u = (dx * cos + dy * sin) / (self.rx + grow)
        v = (-dx * sin + dy * cos) / (self.ry + grow)
        radius = np.sqrt(u * u + v * v)
        if any(self.amplitudes):
            phi = np.arctan2(v, u)
            limit = 1.0 + sum(
                a * np.cos(k * phi + p)
                for k, a, p in zip((2, 3, 4), self.amplitudes, self.phases, strict=True)
            )
            return radius <= limit
        return radius <= 1.0

    def point(self, distance: float, direction: float) -> tuple[float, float]:
        """(y, x) of the point at `distance` (fraction of the radii) in `direction` (body frame)."""
        u, v = distance * math.cos(direction) * self.rx, distance * math.sin(direction) * self.ry
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return self.cy + u * sin + v * cos, self.cx + u * cos - v * sin


@dataclass
class _Placed:
    """An object during layout: body and part masks, and what later objects leave visible."""

    class_id: int
    body: np.ndarray
    part: np.ndarray
    visible: np.ndarray


def _hsv(
    rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]
) -> np.ndarray:
    """A random colour as (3,) float32 RGB in 0..255: any hue, HSV s and v in the ranges."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, dtype=np.float32) * 255


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W, 3) float32 in [-1, 1]: a random (cells+1)^2 grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1, 3)).astype(np.float32)

    def weights(n: int) -> np.ndarray:
        pos = np.linspace(0, cells, n, dtype=np.float32)
        return np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(cells + 1, dtype=np.float32)))

    rows = (weights(height) @ grid.reshape(cells + 1, -1)).reshape(height, cells + 1, 3)
    return (rows.transpose(0, 2, 1) @ weights(width).T).transpose(0, 2, 1)


def _texture(
    rng: np.random.Generator,
    shape: tuple[int, int],
    colour: np.ndarray,
    smooth: float,
    grain: float,
    cells: int,
) -> np.ndarray:
    height, width = shape
    tex = colour + smooth * _smooth_noise(rng, height, width, cells)
    return tex + rng.normal(0, grain, size=(height, width, 3)).astype(np.float32)


def _part_pattern(style: str, yy: np.ndarray, xx: np.ndarray, phase: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: where a part shows its bright colour."""
    y, x = (yy + phase[0]).astype(np.int64), (xx + phase[1]).astype(np.int64)
    if style == "hstripes":
        on = (y // STRIPE_WIDTH) % 2 == 0
    elif style == "vstripes":
        on = (x // STRIPE_WIDTH) % 2 == 0
    elif style == "checker":
        on = (y // STRIPE_WIDTH + x // STRIPE_WIDTH) % 2 == 0
    elif style == "dstripes":
        on = ((y + x) // (STRIPE_WIDTH + 1)) % 2 == 0
    else:  # pragma: no cover - PART_STYLES is fixed
        raise ValueError(style)
    return np.broadcast_to(on, np.broadcast_shapes(yy.shape, xx.shape))


def _paint(canvas: np.ndarray, where: np.ndarray, pixels: np.ndarray) -> None:
    canvas[where] = pixels[where] if pixels.ndim == 3 else pixels


def _box(where: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of a non-empty bool mask as slices; None when empty."""
    rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _random_body(
    rng: np.random.Generator, height: int, width: int, radius: float, margin: float = 0.1
) -> _Blob:
    aspect = rng.uniform(0.6, 1.0)
    return _Blob(
        cy=rng.uniform(margin, 1 - margin) * height,
        cx=rng.uniform(margin, 1 - margin) * width,
        ry=radius * aspect,
        rx=radius,
        angle=rng.uniform(0, math.pi),
        amplitudes=tuple(rng.uniform(0, 0.12, size=3)),
        phases=tuple(rng.uniform(0, 2 * math.pi, size=3)),
    )


def _random_part(
    rng: np.random.Generator, body: _Blob, body_area: int, fraction: tuple[float, float]
) -> _Blob:
    area = rng.uniform(*fraction) * body_area
    aspect = rng.uniform(0.75, 1.0)
    radius = math.sqrt(area / math.pi)
    cy, cx = body.point(rng.uniform(0.25, 0.55), rng.uniform(0, 2 * math.pi))
    return _Blob(
        cy=cy,
        cx=cx,
        ry=radius * math.sqrt(aspect),
        rx=radius / math.sqrt(aspect),
        angle=rng.uniform(0, math.pi),
    )


def _distractor_mask(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, height: int, width: int
) -> np.ndarray:
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    size = rng.uniform(3, 9)
    kind = rng.integers(4)
    if kind == 0:  # disc
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
    if kind == 1:  # rotated box
        angle = rng.uniform(0, math.pi)
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        return (np.abs(u) <= size) & (np.abs(v) <= size * rng.uniform(0.4, 1.0))
    if kind == 2:  # triangle: inside three half-planes
        angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3])
        inside = np.ones(np.broadcast_shapes(yy.shape, xx.shape), dtype=bool)
        for a in angles:
            inside &= (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a) <= size * 0.6
        return inside
    # bar: a thick segment
    angle, length, half = rng.uniform(0, math.pi), rng.uniform(10, 30), rng.uniform(1, 2)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= half)


def void_band(instances: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels within `width` (Chebyshev) of a pixel of another instance.

    instances: (H, W) int, 0 = background. The band lies on both sides of every
    boundary between different instances (object/background or
    object/object); the image border is not a boundary.
    """
    band = np.zeros(instances.shape, dtype=bool)
    if width <= 0:
        return band
    height, w = instances.shape
    padded = np.pad(instances, width, mode="edge")
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dy or dx:
                shifted = padded[width + dy : width + dy + height, width + dx : width + dx + w]
                band |= shifted != instances
    return band


def render_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_classes: int,
    *,
    max_objects: int = 3,
    max_classes_per_image: int = 2,
    part_fraction: tuple[float, float] = (0.10, 0.20),
    num_decoys: tuple[int, int] = (0, 2),
    hard_decoys: float = 0.0,
    num_distractors: tuple[int, int] = (3, 8),
    void_width: int = 1,
) -> SyntheticImage:
    """Draw one image, its GT mask, labels and objects (see the module docstring).

    Returns:
        SyntheticImage with image (H, W, 3) uint8, mask (H, W) uint8 (class
        index c + 1, 0 background, 255 void), labels (K,) uint8 and the
        objects that have at least one non-void pixel.
    """
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    min_side = min(height, width)
    classes = list(SYNTHETIC_CLASSES[:num_classes])
    spare_styles = [PART_STYLES[c] for c in SYNTHETIC_CLASSES[num_classes:]]

    # -- layout: objects first (geometry only), then decoys around them --------
    n_image_classes = int(rng.integers(1, min(max_classes_per_image, num_classes) + 1))
    image_classes = [int(c) for c in rng.choice(num_classes, size=n_image_classes, replace=False)]
    n_objects = int(rng.integers(n_image_classes, max(max_objects, n_image_classes) + 1))
    object_classes = image_classes + [
        int(c) for c in rng.choice(image_classes, size=n_objects - n_image_classes)
    ]
    scale = 1.0 if n_objects == 1 else 0.85

    placed: list[_Placed] = []
    for index, class_id in enumerate(object_classes):
        for attempt in range(30):
            force = index == 0 and attempt == 29
            body = _random_body(rng, height, width, min_side * rng.uniform(0.18, 0.3) * scale)
            if force:  # a first object that surely fits: centred, part near the centre
                body = _Blob(height / 2, width / 2, body.ry, body.rx, body.angle)
            body_mask = body.mask(yy, xx)
            if not force and body_mask.sum() < 64:
                continue
            part = _random_part(rng, body, int(body_mask.sum()), part_fraction)
            if force:
                part = _Blob(*body.point(0.3, 0.0), part.ry, part.rx, part.angle)
            part_mask = part.mask(yy, xx)
            full_part_area = math.pi * part.rx * part.ry
            if not force and part_mask.sum() < 0.75 * full_part_area:
                continue  # the part must stay (mostly) inside the image
            obj_mask = body_mask | part_mask
            if not force and not all(
                (old.visible & old.part & ~obj_mask).sum() >= 0.8 * old.part.sum()
                and (old.visible & ~obj_mask).sum() >= 0.5 * (old.body | old.part).sum()
                for old in placed
            ):
                continue  # would hide too much of an earlier object or of its part
            for old in placed:
                old.visible &= ~obj_mask
            placed.append(_Placed(class_id, body_mask, part_mask, obj_mask.copy()))
            break

    union = np.zeros((height, width), dtype=bool)
    for obj in placed:
        union |= obj.body | obj.part
    union = void_band(union.astype(np.int32), 3) | union  # keep decoys 3 px away

    # (body mask, fake-part mask, (colour, style or None for a solid fill))
    decoys: list[tuple[np.ndarray, np.ndarray | None, tuple[np.ndarray, str | None]]] = []
    for _ in range(int(rng.integers(num_decoys[0], num_decoys[1] + 1))):
        for _attempt in range(10):
            body = _random_body(rng, height, width, min_side * rng.uniform(0.1, 0.22), margin=0.0)
            body_mask = body.mask(yy, xx)
            if body_mask.sum() < 32 or (body_mask & union).any():
                continue
            fake_part, fake_look = None, (np.zeros(3, np.float32), None)
            if rng.uniform() < 0.6:
                part = _random_part(rng, body, int(body_mask.sum()), part_fraction)
                fake_part = part.mask(yy, xx) & ~union
                if spare_styles and rng.uniform() < hard_decoys:
                    colour, style = spare_styles[int(rng.integers(len(spare_styles)))]
                    fake_look = (np.float32(colour), style)
                else:
                    fake_look = (_hsv(rng, _DISTRACTOR_SATURATION, _DISTRACTOR_VALUE), None)
            decoys.append((body_mask, fake_part, fake_look))
            union |= body_mask
            break

    # -- drawing, back to front ----------------------------------------------
    canvas = _texture(
        rng,
        (height, width),
        _hsv(rng, _BACKGROUND_SATURATION, _BACKGROUND_VALUE),
        smooth=28.0,
        grain=5.0,
        cells=int(rng.integers(2, 6)),
    )
    for body_mask, fake_part, (fake_colour, fake_style) in decoys:
        _paint_body(rng, canvas, body_mask)
        if fake_part is not None and fake_style is not None:
            _paint_part(rng, canvas, fake_part, yy, xx, fake_colour, fake_style)
        elif fake_part is not None:
            _paint(canvas, fake_part, fake_colour)
    for _ in range(int(rng.integers(num_distractors[0], num_distractors[1] + 1))):
        where = _distractor_mask(rng, yy, xx, height, width)
        _paint(canvas, where, _hsv(rng, _DISTRACTOR_SATURATION, _DISTRACTOR_VALUE))

    instances = np.zeros((height, width), dtype=np.int32)
    for number, obj in enumerate(placed, start=1):
        _paint_body(rng, canvas, obj.body)
        colour, style = PART_STYLES[classes[obj.class_id]]
        jitter = rng.uniform(-12, 12, size=3).astype(np.float32)
        _paint_part(rng, canvas, obj.part, yy, xx, np.float32(colour) + jitter, style)
        instances[obj.body | obj.part] = number
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    # -- ground truth ------------------------------------------------------------
    class_of = np.array([BACKGROUND_INDEX] + [o.class_id + 1 for o in placed], dtype=np.uint8)
    mask = class_of[instances]
    mask[void_band(instances, void_width)] = IGNORE_INDEX
    objects = []
    for number, obj in enumerate(placed, start=1):
        seen = instances == number
        if not (seen & (mask != IGNORE_INDEX)).any():
            continue
        rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
        bbox = (int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1)
        touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == height - 1 or cols[-1] == width - 1
        occluded = seen.sum() < (obj.body | obj.part).sum()
        objects.append(SyntheticObject(obj.class_id, bbox, bool(touches), bool(occluded)))
    labels = np.zeros(num_classes, dtype=np.uint8)
    labels[[o.class_id for o in objects]] = 1
    return SyntheticImage(image=image, mask=mask, labels=labels, objects=objects)


def _paint_body(rng: np.random.Generator, canvas: np.ndarray, where: np.ndarray) -> None:
    box = _box(where)
    if box is not None:
        height, width = (s.stop - s.start for s in box)
        _paint(canvas[box], where[box], _body_texture(rng, height, width))


def _paint_part(
    rng: np.random.Generator,
    canvas: np.ndarray,
    where: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    colour: np.ndarray,
    style: str,
) -> None:
    box = _box(where)
    if box is not None:
        fill = _striped(rng, yy[box[0]], xx[:, box[1]], colour, style)
        _paint(canvas[box], where[box], fill)


def _body_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A body's class-agnostic fill: dark, low-saturation colour, shading, blotches, grain."""
    tex = _texture(
        rng,
        (height, width),
        _hsv(rng, _BODY_SATURATION, _BODY_VALUE),
        smooth=14.0,
        grain=7.0,
        cells=int(rng.integers(3, 8)),
    )
    angle = rng.uniform(0, 2 * math.pi)
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    shading = 14.0 * (yy * math.sin(angle) + xx * math.cos(angle))
    return tex + shading[..., None]


def _striped(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, colour: np.ndarray, style: str
) -> np.ndarray:
    """(H, W, 3) float32: a part's fill, `colour` alternating with a dark shade in `style`."""
    phase = (int(rng.integers(2 * STRIPE_WIDTH)), int(rng.integers(2 * STRIPE_WIDTH)))
    on = _part_pattern(style, yy, xx, phase)
    fill = np.where(on[..., None], colour, colour * _DARK_SHADE).astype(np.float32)
    return fill + rng.normal(0, 4.0, size=fill.shape).astype(np.float32)


def annotation_xml(
    name: str, height: int, width: int, classes: list[str], objects: list[SyntheticObject]
) -> str:
    """A VOC-style annotation (filename, size, one <object> per object with its <bndbox>)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "synthetic"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "psa_core synthetic"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = classes[obj.class_id]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "occluded").text = str(int(obj.occluded))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox, strict=True):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def image_name(index: int) -> str:
    """File stem of image `index`: syn_000000, syn_000001, ..."""
    return f"syn_{index:06d}"


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise PsaError(f"synthetic.{key}: {message}; fix it in config.yaml")


def generate(
    root: str | os.PathLike,
    *,
    num_train: int = SyntheticSettings.num_train,
    num_val: int = SyntheticSettings.num_val,
    image_size: tuple[int, int] = SyntheticSettings.image_size,
    num_classes: int = SyntheticSettings.num_classes,
    seed: int = SyntheticSettings.seed,
    max_objects: int = 3,
    max_classes_per_image: int = 2,
    part_fraction: tuple[float, float] = (0.10, 0.20),
    num_decoys: tuple[int, int] = (0, 2),
    hard_decoys: float = 0.0,
    num_distractors: tuple[int, int] = (3, 8),
    void_width: int = 1,
    jpeg_quality: int = 95,
) -> None:
    """Write a synthetic dataset in the VOC layout under `root`.

    Writes JPEGImages/*.jpg, SegmentationClass/*.png (palette),
    Annotations/*.xml, ImageSets/Segmentation/{train,val}.txt (val only when
    num_val > 0), classes.txt and synthetic.json (the parameters). Images
    syn_000000 ... are train, the next `num_val` are val. Existing files of
    the same names are replaced; others are left alone.

    Args:
        root: output folder (created).
        num_train, num_val: images per split.
        image_size: (min_side, max_side); height and width are drawn
            independently from this range.
        num_classes: how many of `SYNTHETIC_CLASSES` to use (first n).
        seed: non-negative int; same seed, same bytes.
        max_objects: objects per image, 1..max_objects (at least one per class).
        max_classes_per_image: classes per image, 1..this.
        part_fraction: (low, high) of a part's area as a fraction of its body's.
        num_decoys: (low, high) part-less bodies per image (background).
        hard_decoys: probability that a decoy's fake part takes the colour and
            pattern of a class not in use (a hard negative; needs
            num_classes < len(SYNTHETIC_CLASSES)). 0 keeps the CPU demo
            learnable in a minute; raise it for a harder benchmark.
        num_distractors: (low, high) small class-less shapes per image.
        void_width: void band in pixels on each side of object boundaries (0: none).
        jpeg_quality: JPEG quality of the images.
    """
    _check(len(image_size) == 2, "image_size", f"is {image_size!r}; give [min_side, max_side]")
    low, high = (int(v) for v in image_size)
    _check(num_train >= 1, "num_train", f"is {num_train}, must be at least 1")
    _check(num_val >= 0, "num_val", f"is {num_val}, must be 0 or more")
    _check(
        32 <= low <= high, "image_size", f"is {list(image_size)}; need 32 <= min_side <= max_side"
    )
    _check(
        1 <= num_classes <= len(SYNTHETIC_CLASSES),
        "num_classes",
        f"is {num_classes}; choose 1..{len(SYNTHETIC_CLASSES)}",
    )
    _check(seed >= 0, "seed", f"is {seed}, must be a non-negative integer")
    _check(max_objects >= 1, "max_objects", f"is {max_objects}, must be at least 1")
    _check(max_classes_per_image >= 1, "max_classes_per_image", "must be at least 1")
    _check(
        0 < part_fraction[0] <= part_fraction[1] < 1, "part_fraction", "need 0 < low <= high < 1"
    )
    _check(0 <= num_decoys[0] <= num_decoys[1], "num_decoys", "need 0 <= low <= high")
    _check(0 <= hard_decoys <= 1, "hard_decoys", f"is {hard_decoys}, must be in [0, 1]")
    _check(
        0 <= num_distractors[0] <= num_distractors[1], "num_distractors", "need 0 <= low <= high"
    )
    _check(void_width >= 0, "void_width", f"is {void_width}, must be 0 or more")

    root = Path(root)
    classes = list(SYNTHETIC_CLASSES[:num_classes])
    for folder in (IMAGE_DIR, MASK_DIR, ANNOTATION_DIR, LIST_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    splits = {"train": range(num_train), "val": range(num_train, num_train + num_val)}
    for split, indices in splits.items():
        names = []
        for index in indices:
            rng = np.random.default_rng([seed, index])
            height, width = (int(v) for v in rng.integers(low, high + 1, size=2))
            sample = render_image(
                rng,
                height,
                width,
                num_classes,
                max_objects=max_objects,
                max_classes_per_image=max_classes_per_image,
                part_fraction=part_fraction,
                num_decoys=num_decoys,
                hard_decoys=hard_decoys,
                num_distractors=num_distractors,
                void_width=void_width,
            )
            name = image_name(index)
            io.write_image(image_path(root, name), sample.image, quality=jpeg_quality)
            io.write_mask(root / MASK_DIR / f"{name}.png", sample.mask)
            xml = annotation_xml(name, height, width, classes, sample.objects)
            with io.atomic_path(annotation_path(root, name)) as tmp:
                tmp.write_text(xml)
            names.append(name)
        if names:
            io.write_lines(root / LIST_DIR / f"{split}.txt", names)
    io.write_lines(root / CLASSES_FILE, classes)
    io.write_json(
        root / "synthetic.json",
        io.provenance(
            num_train=num_train,
            num_val=num_val,
            image_size=[low, high],
            num_classes=num_classes,
            seed=seed,
            max_objects=max_objects,
            max_classes_per_image=max_classes_per_image,
            part_fraction=list(part_fraction),
            num_decoys=list(num_decoys),
            hard_decoys=hard_decoys,
            num_distractors=list(num_distractors),
            void_width=void_width,
            jpeg_quality=jpeg_quality,
        ),
    )
