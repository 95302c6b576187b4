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


def set_constants(family: str, items: list[str]) -> dict[str, object]:
    """Set module constants of a family's generator from NAME=VALUE items (YAML values; a
    list becomes a tuple), e.g. `DIAMETER=[0.3, 0.6]`: a variant of the family, for a
    measurement (`--family-set` of cam_probe.py and robustness.py). Returns the values
    as read (lists stay lists, ready for JSON)."""
    import sys

    import yaml

    module = sys.modules[FAMILIES[family].__module__]
    values: dict[str, object] = {}
    for item in items:
        name, _, text = item.partition("=")
        if not name.isupper() or not hasattr(module, name):
            raise SystemExit(f"--family-set {item}: {module.__name__} has no constant {name}")
        if name in ("NUM_TRAIN", "NUM_VAL"):  # bound as generate()'s defaults already
            raise SystemExit(f"--family-set {item}: use --num-train for the split sizes")
        values[name] = value = yaml.safe_load(text)
        setattr(module, name, tuple(value) if isinstance(value, list) else value)
    return values


__all__ = ["CLASSES", "FAMILIES", "Generate", "set_constants"]
