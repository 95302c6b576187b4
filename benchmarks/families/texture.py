"""Family `texture`: small images where only a local pattern tells an object's class.

An object is an irregular smooth blob of a random colour; its class is the
pattern on it (`PATTERNS`): near-horizontal stripes (bird), dots (cat), a
checkerboard (dog) or concentric rings (person), each with a random period,
phase, duty and contrast colour, drawn anti-aliased or hard. Backgrounds are
smooth two- or three-colour gradients with plain clutter (small ellipses,
rectangles and lines of solid random colours: no pattern, no class). About a
quarter of the objects touch or are cut by the image border; sizes run from
about 10% to 50% of the image side. No void band in the masks.
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
    gradient,
    luminance,
    paint,
    paint_on_top,
    random_colour,
    smooth_noise,
    window,
    write_dataset,
)

NUM_TRAIN = 240
NUM_VAL = 60

IMAGE_SIDE = (112, 144)
"""Smallest and largest side (px); height and width are drawn independently."""

NUM_OBJECTS = (1, 3)
DIAMETER = (0.10, 0.50)
"""Object diameter as a fraction of the shorter image side (log-uniform)."""

BORDER_FRACTION = 0.25
"""Share of objects placed across an image edge."""

PERIOD = (5.0, 9.0)
"""Pattern period (px) of a mid-sized object; scaled by 0.8 (small) to 1.2 (large)."""

STRIPE_ANGLE = np.deg2rad(20.0)
"""Stripes (bird) run within this angle of horizontal (horizontal flips keep them so)."""

NUM_CLUTTER = (4, 14)
TOP_CLUTTER_FRACTION = 0.3
"""Share of images with one thin line drawn over the objects (the mask shows it as background)."""

MIN_VISIBLE_PIXELS = 40
MIN_VISIBLE_FRACTION = 0.4
MAX_TRIES = 30
NOISE_SIGMA = (1.0, 5.0)


def _phase(rng: np.random.Generator, period: float) -> float:
    return float(rng.uniform(0, period))


def _stripes(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    angle = rng.uniform(-STRIPE_ANGLE, STRIPE_ANGLE) + np.pi / 2  # normal of horizontal stripes
    u = x * np.cos(angle) + y * np.sin(angle) + _phase(rng, period)
    half_width = period * rng.uniform(0.35, 0.6) / 2
    return half_width - np.abs(np.mod(u, period) - period / 2)


def _dots(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    angle = rng.uniform(0, np.pi / 2)
    c, s = np.cos(angle), np.sin(angle)
    u = np.mod(c * x + s * y + _phase(rng, period), period) - period / 2
    v = np.mod(-s * x + c * y + _phase(rng, period), period) - period / 2
    return period * rng.uniform(0.22, 0.34) - np.hypot(u, v)


def _checker(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    angle = rng.uniform(0, np.pi / 2)
    c, s = np.cos(angle), np.sin(angle)
    u = np.mod(c * x + s * y + _phase(rng, period), period)
    v = np.mod(-s * x + c * y + _phase(rng, period), period)
    half = period / 2
    inside = (u < half) ^ (v < half)
    edge_u = np.minimum(np.mod(u, half), half - np.mod(u, half))
    edge_v = np.minimum(np.mod(v, half), half - np.mod(v, half))
    return np.where(inside, 1.0, -1.0) * np.minimum(edge_u, edge_v)


def _rings(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    shift = rng.uniform(-0.15, 0.15, size=2) * period * 2
    d = np.hypot(x - shift[0], y - shift[1]) + _phase(rng, period)
    half_width = period * rng.uniform(0.35, 0.6) / 2
    return half_width - np.abs(np.mod(d, period) - period / 2)


PATTERNS: tuple[Callable[..., np.ndarray], ...] = (_stripes, _dots, _checker, _rings)
"""Signed pattern value (px, positive on the pattern) per class, in `CLASSES` order."""


def _blob(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A random smooth closed shape: r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)),
    k = 2..5; returns (amplitudes, phases, largest radius)."""
    ks = np.arange(2, 6)
    amplitudes = rng.uniform(0, 0.32, size=ks.size) / (ks - 1) ** 0.7
    phases = rng.uniform(0, 2 * np.pi, size=ks.size)
    theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    profile = 1 + (amplitudes[:, None] * np.cos(ks[:, None] * theta + phases[:, None])).sum(0)
    return amplitudes, phases, radius * float(np.maximum(profile, 0.35).max())


def _blob_sdf(win: Window, radius: float, amplitudes: np.ndarray, phases: np.ndarray):
    theta = np.arctan2(win.y, win.x)
    ks = np.arange(2, 6, dtype=np.float32)[:, None, None]
    profile = 1 + (amplitudes[:, None, None] * np.cos(ks * theta + phases[:, None, None])).sum(0)
    return np.hypot(win.x, win.y) - radius * np.maximum(profile, 0.35)


def _pattern_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A second colour that stands out from `base`: a darker or lighter version, or
    another random colour of clearly different brightness."""
    if rng.random() < 0.5:
        target = 0.0 if luminance(base) > 110 else 255.0
        return base + (target - base) * rng.uniform(0.45, 0.85)
    for _ in range(20):
        other = random_colour(rng)
        if abs(luminance(other) - luminance(base)) > 55:
            return other
    return 255.0 - base


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    image = gradient(
        height, width, rng.uniform(0, 2 * np.pi), random_colour(rng), random_colour(rng)
    )
    if rng.random() < 0.5:  # a third colour in a soft patch
        weight = smooth_noise(rng, height, width, int(rng.integers(2, 5)))[..., None]
        image = image * (1 - 0.6 * weight) + random_colour(rng) * 0.6 * weight
    return image


def _clutter(rng: np.random.Generator, height: int, width: int, thin: bool = False):
    """A plain distractor: (window, alpha) of a small ellipse, rectangle or line."""
    side = min(height, width)
    kind = 2 if thin else int(rng.integers(3))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    angle = rng.uniform(0, np.pi)
    if kind == 2:
        length, half = rng.uniform(0.06, 0.3) * side, rng.uniform(0.5, 1.3)
        size = (length / 2, half)
    else:
        size = tuple(rng.uniform(0.015, 0.07, size=2) * side)
    win = window(height, width, cx, cy, max(size) + 1)
    if win is None:
        return None
    x, y = win.rotated(angle)
    sdf = ellipse_sdf(x, y, *size) if kind == 0 else box_sdf(x, y, *size)
    return win, coverage(sdf, antialias=bool(rng.random() < 0.7))


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
        diameter = side * np.exp(rng.uniform(*np.log(DIAMETER)))
        radius = diameter / 2
        amplitudes, phases, reach = _blob(rng, radius)
        cx, cy = border_centre(rng, height, width, reach, bool(rng.random() < BORDER_FRACTION))
        win = window(height, width, cx, cy, reach)
        if win is None:
            continue
        alpha = coverage(
            _blob_sdf(win, radius, amplitudes, phases), antialias=bool(rng.random() < 0.85)
        )
        placed = Placed(win, alpha, len(objects) + 1)
        if layout.try_place(placed):
            objects.append((placed, int(rng.integers(len(CLASSES))), radius))
    if not objects:  # never in practice: the first try of a blank image only fails when tiny
        return draw_sample(rng)

    image = _background(rng, height, width)
    for _ in range(int(rng.integers(NUM_CLUTTER[0], NUM_CLUTTER[1] + 1))):
        if (item := _clutter(rng, height, width)) is not None:
            paint(image, item[0], item[1], random_colour(rng))
    for placed, cls, radius in objects:
        win = placed.win
        period = rng.uniform(*PERIOD) * (0.8 + 0.4 * min(radius / (0.25 * side), 1.0))
        value = PATTERNS[cls](rng, win.x, win.y, period)
        pattern = coverage(-value, antialias=bool(rng.random() < 0.6))[..., None]
        base = random_colour(rng)
        light = rng.uniform(0, 2 * np.pi)
        slope = rng.uniform(-0.15, 0.15) / radius
        shade = 1 + slope * (win.x * np.cos(light) + win.y * np.sin(light))
        colour = (base * (1 - pattern) + _pattern_colour(rng, base) * pattern) * shade[..., None]
        paint(image, win, placed.alpha, colour)
    if rng.random() < TOP_CLUTTER_FRACTION:
        draw = partial(_clutter, rng, height, width, thin=True)
        paint_on_top(image, layout, draw, lambda _: random_colour(rng), MAX_TRIES)
    image += rng.normal(0, rng.uniform(*NOISE_SIGMA), size=image.shape).astype(np.float32)
    return finish_sample(image, layout.instance, [cls for _, cls, _ in objects])


def generate(
    root: str | os.PathLike, seed: int = 0, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL
) -> Path:
    """Write the family's dataset in the VOC layout under `root` (replaced whole)."""
    return write_dataset(root, seed, {"train": num_train, "val": num_val}, draw_sample)
