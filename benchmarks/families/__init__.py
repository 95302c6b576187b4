"""Dataset families for the robustness suite (issue 17): independent synthetic datasets
in the PASCAL VOC layout, each varying what a real dataset varies.

Every family is a module with `NUM_TRAIN`, `NUM_VAL` and
`generate(root, seed, num_train=..., num_val=...) -> Path`; `FAMILIES` maps the
family name to its `generate`.

    texture  ~128 px; the class is a local pattern (stripes, dots, checker, rings)
             on a blob of random colour; gradient backgrounds with plain clutter.
    shapes   ~320 px; the class is the outline (star, ring, cross, crescent);
             textured backgrounds, distractor ellipses and rectangles, overlaps.
    hue      ~176 px; the class is the hue of a saturated shape; desaturated
             backgrounds and clutter, brightness varied over each object.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import hue, shapes, texture
from .common import CLASSES

Generate = Callable[..., Path]
"""`generate(root: str | os.PathLike, seed: int, num_train: int, num_val: int) -> Path`."""

FAMILIES: dict[str, Generate] = {
    "texture": texture.generate,
    "shapes": shapes.generate,
    "hue": hue.generate,
}

__all__ = ["CLASSES", "FAMILIES", "Generate"]
