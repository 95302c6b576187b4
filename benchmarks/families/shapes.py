"""Family `shapes`: larger images where only an object's outline tells its class.

Classes are shapes (`SHAPES`): a star of 5 or 6 points (bird), a ring (cat), a
plus-shaped cross (dog) and a crescent (person), each with random proportions,
rotation and size (about 8% to 45% of the image side), in one random colour
with a light gradient and noise. Backgrounds are textured (smooth colour noise,
bands of random colours, or a random tile repeated) and carry distractors that
are no class (ellipses and rectangles in random colours); a quarter of the
images get one more distractor drawn over the objects. Objects may overlap
(the later one on top; the mask follows what is visible) and about a quarter
touch or are cut by the border. Masks mark a 2 px void band (255) along every
outline, as VOC's do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
    paint,
    paint_on_top,
    polygon_sdf,
    random_colour,
    smooth_noise,
    window,
    write_dataset,
)

NUM_TRAIN = 160
NUM_VAL = 40

IMAGE_SIDE = (288, 352)
"""Smallest and largest side (px); height and width are drawn independently."""

NUM_OBJECTS = (1, 3)
DIAMETER = (0.08, 0.45)
"""Object diameter as a fraction of the shorter image side (log-uniform)."""

BORDER_FRACTION = 0.25
"""Share of objects placed across an image edge."""

NUM_CLUTTER = (2, 7)
CLUTTER_DIAMETER = (0.05, 0.35)
TOP_CLUTTER_FRACTION = 0.25

MIN_VISIBLE_PIXELS = 60
MIN_VISIBLE_FRACTION = 0.5
MAX_TRIES = 40
NOISE_SIGMA = (2.0, 8.0)


def _star(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    points = int(rng.integers(5, 7))
    inner = rng.uniform(0.38, 0.55)
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * inner)
    return polygon_sdf(x, y, np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))


def _ring(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    inner = radius * rng.uniform(0.45, 0.7)
    d = np.hypot(x, y)
    return np.maximum(d - radius, inner - d)


def _cross(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    arm = radius * rng.uniform(0.2, 0.34)
    return np.minimum(box_sdf(x, y, radius, arm), box_sdf(x, y, arm, radius))


def _crescent(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    bite = radius * rng.uniform(0.75, 0.95)
    offset = radius * rng.uniform(0.35, 0.6)
    return np.maximum(np.hypot(x, y) - radius, bite - np.hypot(x - offset, y))


SHAPES: tuple[Callable[..., np.ndarray], ...] = (_star, _ring, _cross, _crescent)
"""Signed distance of each class's shape in its own frame, in `CLASSES` order."""


def _texture_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    colours = [random_colour(rng) for _ in range(3)]
    a = smooth_noise(rng, height, width, int(rng.integers(3, 24)))[..., None]
    b = smooth_noise(rng, height, width, int(rng.integers(8, 48)))[..., None]
    return (colours[0] * (1 - a) + colours[1] * a) * (1 - 0.5 * b) + colours[2] * 0.5 * b


def _texture_bands(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    palette = np.stack([random_colour(rng) for _ in range(int(rng.integers(2, 6)))])
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    u -= u.min()
    edges = np.cumsum(rng.uniform(6, 40, size=int(u.max() / 6) + 2))
    band = np.searchsorted(edges, u)
    return palette[rng.integers(len(palette), size=band.max() + 1)[band]]


def _texture_tiles(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    size = int(rng.integers(12, 41))
    tile = np.empty((size, size, 3), dtype=np.float32)
    tile[...] = random_colour(rng)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, size, size=2)
        win = window(size, size, cx, cy, size / 3)
        if win is None:
            continue
        a, b = rng.uniform(1.5, size / 3, size=2)
        sdf = ellipse_sdf(win.x, win.y, a, b) if rng.random() < 0.5 else box_sdf(win.x, win.y, a, b)
        paint(tile, win, coverage(sdf), random_colour(rng))
    reps = (height // size + 1, width // size + 1, 1)
    return np.tile(tile, reps)[:height, :width].copy()


BACKGROUNDS = (_texture_noise, _texture_bands, _texture_tiles)


def _shaded(rng: np.random.Generator, win: Window, radius: float) -> np.ndarray:
    """(h, w, 3): one random colour with a light gradient and pixel noise."""
    light = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(-0.25, 0.25) / max(radius, 1.0)
    shade = 1 + slope * (win.x * np.cos(light) + win.y * np.sin(light))
    colour = random_colour(rng) * shade[..., None]
    return colour + rng.normal(0, rng.uniform(0, 8), size=colour.shape).astype(np.float32)


def _distractor(rng: np.random.Generator, height: int, width: int):
    """An ellipse or a rectangle (no class), rotated: (window, alpha, radius) or None."""
    side = min(height, width)
    radius = side * rng.uniform(*CLUTTER_DIAMETER) / 2
    half = (radius, radius * rng.uniform(0.25, 1.0))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    win = window(height, width, cx, cy, radius)
    if win is None:
        return None
    x, y = win.rotated(rng.uniform(0, np.pi))
    sdf = ellipse_sdf(x, y, *half) if rng.random() < 0.5 else box_sdf(x, y, *half)
    return win, coverage(sdf, antialias=bool(rng.random() < 0.8)), radius


def draw_sample(rng: np.random.Generator) -> Sample:
    """One image of the family, its mask and its objects."""
    height, width = (int(v) for v in rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1, size=2))
    side = min(height, width)
    layout = Layout(height, width, MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION)
    objects: list[tuple[Placed, int, float]] = []
    wanted = int(rng.integers(NUM_OBJECTS[0], NUM_OBJECTS[1] + 1))
    for _ in range(MAX_TRIES):
        if len(objects) == wanted:
            break
        cls = int(rng.integers(len(CLASSES)))
        radius = side * np.exp(rng.uniform(*np.log(DIAMETER))) / 2
        cx, cy = border_centre(rng, height, width, radius, bool(rng.random() < BORDER_FRACTION))
        win = window(height, width, cx, cy, radius)
        if win is None:
            continue
        x, y = win.rotated(rng.uniform(0, 2 * np.pi))
        alpha = coverage(SHAPES[cls](rng, x, y, radius), antialias=bool(rng.random() < 0.85))
        placed = Placed(win, alpha, len(objects) + 1)
        if layout.try_place(placed):
            objects.append((placed, cls, radius))
    if not objects:
        return draw_sample(rng)

    image = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))](rng, height, width)
    for _ in range(int(rng.integers(NUM_CLUTTER[0], NUM_CLUTTER[1] + 1))):
        if (item := _distractor(rng, height, width)) is not None:
            win, alpha, radius = item
            paint(image, win, alpha, _shaded(rng, win, radius))
    for placed, _, radius in objects:
        paint(image, placed.win, placed.alpha, _shaded(rng, placed.win, radius))
    if rng.random() < TOP_CLUTTER_FRACTION:
        draw = partial(_distractor, rng, height, width)
        paint_on_top(image, layout, draw, lambda item: _shaded(rng, item[0], item[2]), MAX_TRIES)
    image += rng.normal(0, rng.uniform(*NOISE_SIGMA), size=image.shape).astype(np.float32)
    return finish_sample(image, layout.instance, [cls for _, cls, _ in objects], void_band=True)


def generate(
    root: str | os.PathLike, seed: int = 0, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL
) -> Path:
    """Write the family's dataset in the VOC layout under `root` (replaced whole)."""
    return write_dataset(root, seed, {"train": num_train, "val": num_val}, draw_sample)
