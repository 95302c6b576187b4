"""The PASCAL VOC 2012 devkit layout (docs/design.md §2): paths, image lists, labels.

    root/JPEGImages/NAME.jpg                 RGB images
    root/SegmentationClass/NAME.png          GT masks (palette PNG: index = class,
                                             0 = background, 255 = void)
    root/SegmentationClassAug/NAME.png       optional SBD-augmented masks
    root/Annotations/NAME.xml                object annotations (class names)
    root/ImageSets/Segmentation/SPLIT.txt    image lists (train, val, ...)

Image lists are looked up, in this order, in `ImageSets/Segmentation/`,
`ImageSets/SegmentationAug/` and the dataset root itself (where the SBD
`train_aug.txt` often ends up). A line is `NAME`, `NAME FLAG` (VOC's
classification lists) or, as in the `train_aug` lists,
`/JPEGImages/NAME.jpg /SegmentationClassAug/NAME.png`; the name is the stem
of the line's first field (`parse_list_line`). Lists are UTF-8 (a leading BOM
is dropped).

Class ids are 0-based in label vectors ((K,) multi-hot) and 1-based in masks
(index c + 1, see `psa_core.constants.BACKGROUND_INDEX`).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from psa_core import io
from psa_core.constants import BACKGROUND_INDEX, IGNORE_INDEX
from psa_core.errors import PsaError

IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClass"
AUG_MASK_DIR = "SegmentationClassAug"
ANNOTATION_DIR = "Annotations"
IMAGE_SUFFIX = ".jpg"
MASK_SUFFIX = ".png"
ANNOTATION_SUFFIX = ".xml"

LIST_DIR = "ImageSets/Segmentation"
"""Where VOC keeps the segmentation image lists (and where the generator writes them)."""

LIST_DIRS: tuple[str, ...] = (LIST_DIR, "ImageSets/SegmentationAug", ".")
"""Folders (relative to the root) searched for `SPLIT.txt`, first hit wins."""

_IMAGE_FILE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

_LIST_FLAGS = frozenset({"-1", "0", "1"})
"""The second column of VOC's classification lists (`NAME -1`, `NAME  0`, `NAME  1`)."""

_NOT_LISTS = frozenset({"classes"})
"""Root-level .txt files that are not image lists."""


def check_root(root: str | os.PathLike) -> Path:
    """Return `root` as a Path; PsaError when it is not an existing folder."""
    path = Path(root)
    if not path.is_dir():
        raise PsaError(f"dataset root {path} not found; set dataset.root in config.yaml")
    return path


def available_splits(root: str | os.PathLike) -> list[str]:
    """Names of the image lists (`SPLIT.txt`) found in the folders of `LIST_DIRS`, sorted."""
    root = check_root(root)
    found: set[str] = set()
    for folder in LIST_DIRS:
        directory = root / folder
        if directory.is_dir():
            found.update(p.stem for p in directory.glob("*.txt") if p.is_file())
    return sorted(found - _NOT_LISTS)


def image_list_path(root: str | os.PathLike, split: str) -> Path:
    """The file that lists split `split`; PsaError naming the existing splits if none."""
    root = check_root(root)
    for folder in LIST_DIRS:
        candidate = root / folder / f"{split}.txt"
        if split not in _NOT_LISTS and candidate.is_file():
            return candidate
    splits = ", ".join(available_splits(root)) or "none"
    looked = ", ".join(str(root / folder) for folder in LIST_DIRS)
    raise PsaError(
        f"{root}: unknown split '{split}' (no {split}.txt in {looked}); existing splits: "
        f"{splits}; fix the split name in config.yaml"
    )


def _is_path(field: str) -> bool:
    path = PurePosixPath(field)
    return len(path.parts) > 1 or path.suffix.lower() in _IMAGE_FILE_SUFFIXES


def parse_list_line(line: str) -> str:
    """Image name from one list line; PsaError (naming no file) for any other line.

    Accepted: `NAME`; `NAME FLAG` with FLAG -1, 0 or 1 (VOC's classification
    lists); `/JPEGImages/NAME.jpg /SegmentationClassAug/NAME.png` (train_aug,
    the name is the first path's stem). Fields are split on whitespace, so a
    name cannot hold any: `my photo` is refused, not cut to `my`.
    """
    fields = line.split()
    if len(fields) == 2 and (fields[1] in _LIST_FLAGS or all(map(_is_path, fields))):
        fields = fields[:1]
    if len(fields) != 1:
        raise PsaError(
            f"'{line.strip()}' is not one image name (a line is NAME, NAME FLAG or IMAGE_PATH "
            "MASK_PATH, split on whitespace); rename the image and its mask and annotation "
            "without whitespace (e.g. my_photo) and list that name"
        )
    first = PurePosixPath(fields[0])
    if _is_path(fields[0]):
        return first.stem
    return first.name


def read_image_list(root: str | os.PathLike, split: str) -> list[str]:
    """Image names of a split, in file order.

    Args:
        root: dataset root in the VOC layout.
        split: list name, e.g. "train", "val", "train_aug".

    Returns:
        The names (no folder, no suffix). PsaError (one line naming the file,
        and the line where there is one) for a missing root, an unknown split,
        a file that is not UTF-8, a line that is no name (`parse_list_line`),
        an empty list or a name listed twice.
    """
    path = image_list_path(root, split)
    lines = io.read_text(path).splitlines()
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            name = parse_list_line(line)
        except PsaError as exc:
            raise PsaError(f"{path}, line {number}: {exc}") from None
        if name in seen:
            raise PsaError(
                f"{path}: image '{name}' listed twice (lines {seen[name]} and {number}); "
                "remove the duplicate"
            )
        seen[name] = number
        names.append(name)
    if not names:
        raise PsaError(f"{path}: image list is empty; list one image name per line")
    return names


def image_path(root: str | os.PathLike, name: str) -> Path:
    """root/JPEGImages/NAME.jpg (whether or not it exists)."""
    return Path(root) / IMAGE_DIR / f"{name}{IMAGE_SUFFIX}"


def gt_mask_path(root: str | os.PathLike, name: str) -> Path | None:
    """The GT mask: SegmentationClass/NAME.png, else SegmentationClassAug/NAME.png, else None."""
    for folder in (MASK_DIR, AUG_MASK_DIR):
        candidate = Path(root) / folder / f"{name}{MASK_SUFFIX}"
        if candidate.is_file():
            return candidate
    return None


def annotation_path(root: str | os.PathLike, name: str) -> Path:
    """root/Annotations/NAME.xml (whether or not it exists)."""
    return Path(root) / ANNOTATION_DIR / f"{name}{ANNOTATION_SUFFIX}"


def labels_from_xml(path: str | os.PathLike, classes: Sequence[str]) -> np.ndarray:
    """Image-level labels from a VOC annotation file.

    Every `<annotation><object><name>` counts, `difficult` and `truncated`
    objects included: this is what PSA's `make_cls_labels.py` does (it reads
    every `<name>` tag), and a difficult object is still in the image and in
    the segmentation mask. The `<part><name>` tags of VOC's person layout
    (head, hand, foot) are not objects and are skipped.

    Args:
        path: the .xml file.
        classes: class names in label order (K of them).

    Returns:
        (K,) uint8 multi-hot. PsaError for a missing or malformed file, an
        object without a name, or a name not in `classes`.
    """
    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: annotation not found; check the dataset root")
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise PsaError(f"{path}: not valid XML ({exc}); fix or regenerate the annotation") from None
    index = {name: i for i, name in enumerate(classes)}
    labels = np.zeros(len(classes), dtype=np.uint8)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise PsaError(f"{path}: an <object> has no <name>; fix the annotation")
        if name not in index:
            raise PsaError(
                f"{path}: unknown class name '{name}'; add it to dataset.classes in config.yaml "
                "(or to classes.txt in the dataset root) or fix the annotation"
            )
        labels[index[name]] = 1
    return labels


def labels_from_mask(
    mask: np.ndarray, num_classes: int, source: str | os.PathLike | None = None
) -> np.ndarray:
    """Image-level labels from a GT mask.

    Args:
        mask: (H, W) uint8 class indices; 0 = background, 1..K = class 0..K-1,
            255 = void.
        num_classes: K.
        source: the mask's file, named in the error message.

    Returns:
        (K,) uint8 multi-hot of the classes present. PsaError when an index
        outside {0, 1..K, 255} occurs.
    """
    values = np.unique(np.asarray(mask))
    values = values[(values != BACKGROUND_INDEX) & (values != IGNORE_INDEX)]
    bad = values[values > num_classes]
    if bad.size:
        where = f"{source}: " if source is not None else ""
        raise PsaError(
            f"{where}mask holds class index {int(bad[0])} but only {num_classes} classes are "
            "configured; fix dataset.classes (or classes.txt) or the mask"
        )
    labels = np.zeros(num_classes, dtype=np.uint8)
    labels[values.astype(np.int64) - 1] = 1
    return labels
