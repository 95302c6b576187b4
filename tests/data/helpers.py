"""Constants and helpers shared by the tests in tests/data (imported by conftest.py too).

A uniquely named module rather than `from conftest import ...`, which can pick up
another folder's conftest.
"""

from __future__ import annotations

import numpy as np

TREE_CLASSES = ["cat", "dog", "person"]
"""Classes of the hand-written tree, in label order (masks: cat 1, dog 2, person 3)."""

# name -> (objects in the XML as (class, difficult), mask class indices drawn as stripes)
TREE_IMAGES: dict[str, tuple[list[tuple[str, bool]], list[int]]] = {
    "2007_000001": ([("cat", False)], [1]),
    "2007_000002": ([("dog", False), ("person", True)], [2, 3]),
    "2008_000003": ([("person", False), ("cat", False)], [3, 1]),
}
AUG_ONLY = "2011_000004"
"""An image with only an SBD mask (SegmentationClassAug), no XML: labels come from the mask."""
AUG_ONLY_INDICES = [2]

SYNTH_PARAMS = {"num_train": 24, "num_val": 8, "image_size": (96, 128), "num_classes": 4}
"""Parameters of the session-wide synthetic dataset (`synthetic_root`, seed 0)."""


def voc_xml(name: str, objects: list[tuple[str, bool]], with_parts: bool = True) -> str:
    """A VOC-style annotation; person objects get <part> tags like VOC's layout set."""
    parts = "<part><name>head</name></part><part><name>hand</name></part>" if with_parts else ""
    body = "".join(
        f"<object><name>{cls}</name><difficult>{int(diff)}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
        f"{parts if cls == 'person' else ''}</object>"
        for cls, diff in objects
    )
    return f"<annotation><filename>{name}.jpg</filename>{body}</annotation>\n"


def striped_mask(height: int, width: int, indices: list[int]) -> np.ndarray:
    """(H, W) uint8: one horizontal band per index, a void row between bands."""
    mask = np.zeros((height, width), dtype=np.uint8)
    band = height // (len(indices) + 1)
    for k, index in enumerate(indices):
        mask[(k + 1) * band - band // 2 : (k + 1) * band + band // 2, 2:-2] = index
        mask[(k + 1) * band + band // 2, :] = 255
    return mask
