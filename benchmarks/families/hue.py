"""Family `hue`: mid-sized images where an object's colour tells its class.

Each class owns a band of hue (`HUES`, a quarter turn apart, ± `HUE_SPREAD`);
an object is a saturated shape (an irregular polygon or an ellipse) in its
class's hue, with its brightness varied by smooth noise and a light gradient,
so that hue is the one reliable cue and shape and brightness are not.
Backgrounds are desaturated (low-saturation smooth noise or a two-colour
gradient) and carry desaturated clutter (ellipses, rectangles, lines), so a
saturated patch is an object; a quarter of the images get one clutter item
drawn over the objects. About a quarter of the objects touch or are cut by the
image border; sizes run from about 12% to 55% of the image side. Objects may
overlap (the later one on top). No void band in the masks.
"""

from __future__ import annotations

import colorsys
import os
from functools import partial
from pathlib import Path

import numpy as np

from .common import (
    CLASSES,
    Layout,
    Placed,
    Sample,
    Window,
    border_centre,
    box_sdf,
    coverage,
    ellipse_sdf,
    finish_sample,
    gradient,
    paint,
    paint_on_top,
    polygon_sdf,
    smooth_noise,
    window,
    write_dataset,
)

NUM_TRAIN = 240
NUM_VAL = 60

IMAGE_SIDE = (144, 208)
"""Smallest and largest side (px); height and width are drawn independently."""

NUM_OBJECTS = (1, 3)
DIAMETER = (0.12, 0.55)
"""Object diameter as a fraction of the shorter image side (log-uniform)."""

BORDER_FRACTION = 0.25

HUES = (0.0, 0.25, 0.5, 0.75)
"""Centre hue of each class (fraction of a turn), in `CLASSES` order: red, yellow-green,
cyan, violet."""

HUE_SPREAD = 0.04
"""Half-width of a class's hue band (a turn; 0.04 = 14 degrees)."""

SATURATION = (0.55, 0.95)
BACKGROUND_SATURATION = (0.0, 0.22)

NUM_CLUTTER = (3, 10)
TOP_CLUTTER_FRACTION = 0.25
MIN_VISIBLE_PIXELS = 50
MIN_VISIBLE_FRACTION = 0.45
MAX_TRIES = 30
NOISE_SIGMA = (1.0, 6.0)


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """(3,) float32 RGB in [0, 255] from HSV in [0, 1]."""
    return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32) * 255


def _dull(rng: np.random.Generator) -> np.ndarray:
    """A desaturated colour of any hue and brightness."""
    return _rgb(rng.random(), rng.uniform(*BACKGROUND_SATURATION), rng.uniform(0.15, 0.95))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    if rng.random() < 0.5:
        return gradient(height, width, rng.uniform(0, 2 * np.pi), _dull(rng), _dull(rng))
    weight = smooth_noise(rng, height, width, int(rng.integers(3, 16)))[..., None]
    return _dull(rng) * (1 - weight) + _dull(rng) * weight


def _shape_sdf(rng: np.random.Generator, win: Window, radius: float) -> np.ndarray:
    x, y = win.rotated(rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.4:
        return ellipse_sdf(x, y, radius, radius * rng.uniform(0.45, 1.0))
    corners = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=corners))
    radii = radius * rng.uniform(0.55, 1.0, size=corners)
    return polygon_sdf(x, y, np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))


def _object_colour(
    rng: np.random.Generator, cls: int, win: Window, height: int, width: int
) -> np.ndarray:
    """(h, w, 3): the class hue at one saturation, brightness varied over the object."""
    hue = HUES[cls] + rng.uniform(-HUE_SPREAD, HUE_SPREAD)
    base = _rgb(hue, rng.uniform(*SATURATION), 1.0)
    noise = smooth_noise(rng, height, width, int(rng.integers(4, 20)))[win.rows, win.cols]
    low = rng.uniform(0.35, 0.7)
    value = low + (1 - low) * noise
    light = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(-0.004, 0.004)
    value = value * (1 + slope * (win.x * np.cos(light) + win.y * np.sin(light)))
    return base * np.clip(value, 0.15, 1.0)[..., None]


def _clutter(rng: np.random.Generator, height: int, width: int):
    """A desaturated ellipse, rectangle or line (no class): (window, alpha) or None."""
    side = min(height, width)
    kind = int(rng.integers(3))
    if kind == 2:
        size = (rng.uniform(0.1, 0.4) * side / 2, rng.uniform(0.6, 2.0))
    else:
        size = tuple(rng.uniform(0.03, 0.15, size=2) * side)
    win = window(height, width, rng.uniform(0, width), rng.uniform(0, height), max(size) + 1)
    if win is None:
        return None
    x, y = win.rotated(rng.uniform(0, np.pi))
    sdf = ellipse_sdf(x, y, *size) if kind == 0 else box_sdf(x, y, *size)
    return win, coverage(sdf, antialias=bool(rng.random() < 0.7))


def draw_sample(rng: np.random.Generator) -> Sample:
    """One image of the family, its mask and its objects."""
    height, width = (int(v) for v in rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1, size=2))
    side = min(height, width)
    layout = Layout(height, width, MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION)
    objects: list[tuple[Placed, int]] = []
    wanted = int(rng.integers(NUM_OBJECTS[0], NUM_OBJECTS[1] + 1))
    for _ in range(MAX_TRIES):
        if len(objects) == wanted:
            break
        radius = side * np.exp(rng.uniform(*np.log(DIAMETER))) / 2
        cx, cy = border_centre(rng, height, width, radius, bool(rng.random() < BORDER_FRACTION))
        win = window(height, width, cx, cy, radius)
        if win is None:
            continue
        alpha = coverage(_shape_sdf(rng, win, radius), antialias=bool(rng.random() < 0.85))
        placed = Placed(win, alpha, len(objects) + 1)
        if layout.try_place(placed):
            objects.append((placed, int(rng.integers(len(CLASSES)))))
    if not objects:
        return draw_sample(rng)

    image = _background(rng, height, width)
    for _ in range(int(rng.integers(NUM_CLUTTER[0], NUM_CLUTTER[1] + 1))):
        if (item := _clutter(rng, height, width)) is not None:
            paint(image, item[0], item[1], _dull(rng))
    for placed, cls in objects:
        paint(image, placed.win, placed.alpha, _object_colour(rng, cls, placed.win, height, width))
    if rng.random() < TOP_CLUTTER_FRACTION:
        draw = partial(_clutter, rng, height, width)
        paint_on_top(image, layout, draw, lambda _: _dull(rng), MAX_TRIES)
    image += rng.normal(0, rng.uniform(*NOISE_SIGMA), size=image.shape).astype(np.float32)
    return finish_sample(image, layout.instance, [cls for _, cls in objects])


def generate(
    root: str | os.PathLike, seed: int = 0, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL
) -> Path:
    """Write the family's dataset in the VOC layout under `root` (replaced whole)."""
    return write_dataset(root, seed, {"train": num_train, "val": num_val}, draw_sample)
