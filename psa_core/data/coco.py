"""COCO-format datasets: a split's annotation file to a sample sheet and GT masks.

A COCO split (an `instances_SPLIT.json` file and its image folder) is
converted once, by `convert_split` (`psa coco-split`, one Snakemake job per
split), into a sample sheet plus one palette PNG mask per image; everything
downstream reads the sheet. These are the rules of that conversion.

Annotation file (`load_coco`). A JSON object with the lists `images`,
`categories` and `annotations`. Every image needs a unique integer `id`, a
`file_name` and its `height` and `width`; every category a unique integer
`id` and a unique `name` (no `;`, tab or line break: the sheet separates
tags with `;`); every annotation an `image_id` and a `category_id` that
those lists hold. At most 254 categories: class indices must stay below
`IGNORE_INDEX` (255). Anything else is a PsaError naming the file and the fix.

Classes (`coco_classes`). Category ids sorted ascending give class indices
1..K in that order, index 0 being the background (`BACKGROUND_INDEX`); the
class names are the categories' `name`. COCO 2014 has 80 categories with ids
1..90 (with gaps): id 1 (person) is class 1, id 90 (toothbrush) class 80.
The order of the `categories` list does not matter.

Image names. An image's name is its `file_name` less any folder and the
last extension (`COCO_train2014_000000000009.jpg` ->
`COCO_train2014_000000000009`); its
path in the sheet is `IMAGES/file_name` with IMAGES the images pattern
(`dataset.coco_images`, default `{split}`) filled in with the split, relative
to the dataset root (or absolute, if the pattern is). A listed image whose
`file_name` holds whitespace, or two listed images with the same name, are a
PsaError (names are file names of masks and entries of one-name-a-line lists).

Image-level labels. A class is present in an image when at least one
annotation of its category lies on the image, crowd annotations
(`iscrowd: 1`) and annotations without a segmentation included: the object
is visible in the image (a crowd of people still shows people), and the
COCO label files of IRN and ReCAM count them the same way. The
sheet's tags list them in class order.

Images left out. An image without any annotation is left out of the split
(not listed in the sheet, no mask), as IRN's COCO lists leave them out:
with no class present it has nothing to teach a classifier (about 1% of
COCO 2014). `convert_split` counts them (`left_out`).

Masks (`rasterise`), (H, W) uint8, the size from the image entry's
`height` / `width`:

- 0 (background) where no annotation lies; class c's index c (1..K) where an
  instance of it lies; 255 (`IGNORE_INDEX`) where a crowd region lies and no
  non-crowd instance does (a crowd region is "many objects here, not
  outlined one by one": neither background nor a clean instance).
- Overlaps: non-crowd instances are painted in order of decreasing area, a
  later one over an earlier one, so a smaller object lying on a larger one
  (a cup on a table) stays visible. The area is the instance's pixel count
  as rasterised (not the JSON's `area` field); equal areas are painted in
  ascending annotation `id`, so the larger id ends on top. Crowd regions are
  painted before any instance, so an instance always covers them.
- Segmentations: polygons (a list of `[x1, y1, x2, y2, ...]` rings, their
  union), uncompressed RLE (`{"size": [H, W], "counts": [runs]}`) and
  compressed RLE (`counts` a string), rasterised by `pycocotools.mask`,
  COCO's reference implementation. A polygon covers a pixel when pycocotools
  says so: a rectangle with integer corners x0 < x1, y0 < y1 covers exactly
  columns x0..x1-1 and rows y0..y1-1 (`mask[y0:y1, x0:x1]`).
- A ring of fewer than 3 points (fewer than 6 numbers) has no area and is
  dropped (pycocotools mistakes a first ring of 4 numbers for a box;
  detectron2 drops such rings too); a ring with an odd count of numbers, an
  RLE whose `size` is not the image's or whose runs do not add up to
  H x W, or a segmentation of any other shape is a PsaError naming the
  annotation.
- An annotation without a segmentation (missing, null or empty: a box
  only) is skipped; it still counts for the image-level labels.

Masks and the sheet (`convert_split`). When no annotation of the split has a
segmentation (a detection-only file), no mask is written and the sheet's
mask cells are empty; otherwise every listed image gets `MASKS/NAME.png`, a
palette PNG in the project's one palette (`psa_core.io.write_mask`), and its
mask cell holds that file's absolute path. The masks folder and the sheet
are each written atomically (a killed job leaves neither half-written).
Whether the image files exist is not checked here: the index step does.

The sheet is UTF-8 TSV with the header `image<TAB>tags<TAB>split<TAB>mask`
and one row per listed image, in the annotation file's image order.

Plan-time listing (`split_listing`, `cached_split_listing`): the listed
names and whether the split has masks, read with plain `json` (pycocotools'
COCO class builds indexes the listing does not need); the cache stores the
result with the annotation file's path, size and mtime_ns and is reused
while all three match.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, NamedTuple

import numpy as np

from psa_core import io
from psa_core.constants import BACKGROUND_INDEX, IGNORE_INDEX
from psa_core.data import sheet
from psa_core.errors import PsaError

ANNOTATIONS_PATTERN = "annotations/instances_{split}.json"
"""Default annotation file of a split, relative to the dataset root (`dataset.coco_annotations`)."""

IMAGES_PATTERN = "{split}"
"""Default image folder of a split, relative to the dataset root (`dataset.coco_images`)."""


MAX_CLASSES = IGNORE_INDEX - 1
"""At most this many categories: class indices 1..K must stay below `IGNORE_INDEX`."""

_CACHE_FORMAT = 2
"""Version of `cached_split_listing`'s file; a cache of another version is rebuilt."""

_FIX_ANNOTATION = "fix or remove the annotation"
_WHITESPACE = re.compile(r"\s")
_SHOWN = 5
"""How many offending entries an error message names."""


# -- reading the annotation file ------------------------------------------------------


def _shown(items: Sequence[Any]) -> str:
    text = ", ".join(str(item) for item in items[:_SHOWN])
    return text + (" ..." if len(items) > _SHOWN else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a COCO annotation file (the rules: module docstring).

    Returns:
        the parsed JSON object. PsaError (one line naming the file and the
        fix) for a missing file, bad JSON, a missing `images` /
        `categories` / `annotations` list, malformed entries, or an
        annotation whose `image_id` or `category_id` is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise PsaError(
            f"{path}: COCO annotation file not found; check dataset.root and "
            "dataset.coco_annotations in config.yaml"
        )
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise PsaError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); replace the file with a "
            "complete copy"
        ) from None
    except UnicodeDecodeError:
        raise PsaError(f"{path}: not UTF-8 JSON; save the annotation file as UTF-8") from None
    except OSError as exc:
        raise PsaError(f"{path}: cannot read the file ({exc.strerror}); check it") from None
    if not isinstance(data, dict):
        raise PsaError(f"{path}: not a COCO annotation file (no JSON object); check the path")
    for key in ("images", "categories", "annotations"):
        if not isinstance(data.get(key), list):
            raise PsaError(
                f"{path}: no '{key}' list; give a COCO instances file (image_info files of "
                "test splits have no annotations)"
            )
    _check_categories(path, data["categories"])
    _check_images(path, data["images"])
    _check_annotations(path, data)
    return data


def _check_categories(path: Path, categories: list[Any]) -> None:
    if not categories:
        raise PsaError(f"{path}: 'categories' is empty; list the classes there")
    if len(categories) > MAX_CLASSES:
        raise PsaError(
            f"{path}: {len(categories)} categories, over the {MAX_CLASSES} that fit below the "
            f"ignore index {IGNORE_INDEX}; merge or drop categories"
        )
    ids: set[int] = set()
    names: set[str] = set()
    for position, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise PsaError(f"{path}: category #{position} has no integer 'id'; give it one")
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise PsaError(f"{path}: category {cat['id']} has no 'name'; give it one")
        if sheet.TAG_SEPARATOR in name or any(c in name for c in "\t\r\n"):
            raise PsaError(
                f"{path}: category name {name!r} holds '{sheet.TAG_SEPARATOR}', a tab or a line break "
                "(the sample sheet separates tags with ';'); rename the category"
            )
        if cat["id"] in ids:
            raise PsaError(f"{path}: category id {cat['id']} appears twice; make the ids unique")
        if name in names:
            raise PsaError(f"{path}: category name {name!r} appears twice; make the names unique")
        ids.add(cat["id"])
        names.add(name)


def _check_images(path: Path, images: list[Any]) -> None:
    ids: set[int] = set()
    for position, image in enumerate(images):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise PsaError(f"{path}: image entry #{position} has no integer 'id'; give it one")
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not image_name(image):
            raise PsaError(f"{path}: image {image['id']} has no 'file_name'; give it one")
        for key in ("height", "width"):
            value = image.get(key)
            if not _is_int(value) or value < 1:
                raise PsaError(
                    f"{path}: image {image['id']} ({file_name}) has no positive integer '{key}'; "
                    "give the image's size in pixels"
                )
        if image["id"] in ids:
            raise PsaError(f"{path}: image id {image['id']} appears twice; make the ids unique")
        ids.add(image["id"])


def _check_annotations(path: Path, data: Mapping[str, Any]) -> None:
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    bad_images: list[str] = []
    bad_categories: list[str] = []
    for position, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise PsaError(f"{path}: annotation #{position} is not an object; {_FIX_ANNOTATION}")
        label = f"annotation {ann.get('id', f'#{position}')}"
        image_id = ann.get("image_id")
        if not _is_int(image_id) or image_id not in image_ids:
            bad_images.append(f"{label} (image_id {image_id})")
        category_id = ann.get("category_id")
        if not _is_int(category_id) or category_id not in category_ids:
            bad_categories.append(f"{label} (category_id {category_id})")
    if bad_images:
        raise PsaError(
            f"{path}: {len(bad_images)} annotation(s) name an image that 'images' lacks: "
            f"{_shown(bad_images)}; fix their image_id or remove them"
        )
    if bad_categories:
        raise PsaError(
            f"{path}: {len(bad_categories)} annotation(s) name a category that 'categories' "
            f"lacks: {_shown(bad_categories)}; fix their category_id or remove them"
        )


def coco_classes(data: Mapping[str, Any]) -> tuple[list[int], list[str]]:
    """The classes of a COCO file: (category ids ascending, their names in that order).

    Category id `ids[i]` is class index i + 1 (0 is the background); see the
    module docstring.
    """
    by_id = {cat["id"]: str(cat["name"]) for cat in data["categories"]}
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def class_indices(data: Mapping[str, Any]) -> dict[int, int]:
    """category id -> class index (1..K), by `coco_classes`."""
    ids, _ = coco_classes(data)
    return {cat_id: index for index, cat_id in enumerate(ids, start=1)}


def image_name(image_entry: Mapping[str, Any]) -> str:
    """An image's name: its `file_name` less any folder and the last extension, as a
    sample sheet names it (`sheet.image_name`)."""
    return sheet.image_name(image_entry["file_name"])


def annotations_by_image(data: Mapping[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """image id -> its annotations, in file order (images without any are absent)."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return by_image


def _has_segmentation(ann: Mapping[str, Any]) -> bool:
    return bool(ann.get("segmentation"))


def _listed_images(
    path: Path, data: Mapping[str, Any], by_image: Mapping[int, list[Any]]
) -> list[dict[str, Any]]:
    """The image entries of the split (those with annotations), names checked."""
    listed = [image for image in data["images"] if image["id"] in by_image]
    spaced = [image["file_name"] for image in listed if _WHITESPACE.search(image["file_name"])]
    if spaced:
        raise PsaError(
            f"{path}: {len(spaced)} image file name(s) hold whitespace: "
            f"{_shown([repr(n) for n in spaced])}; rename the files and their file_name entries"
        )
    seen: dict[str, str] = {}
    twice: list[str] = []
    for image in listed:
        name = image_name(image)
        if name in seen:
            twice.append(f"{seen[name]} and {image['file_name']}")
        seen.setdefault(name, image["file_name"])
    if twice:
        raise PsaError(
            f"{path}: {len(twice)} image(s) share a name (file stem) with another: "
            f"{_shown(twice)}; rename the files and their file_name entries"
        )
    return listed


# -- plan-time listing ----------------------------------------------------------------


class SplitListing(NamedTuple):
    """What the plan needs of a COCO split: its image names (file order, images without
    annotations left out), whether any annotation has a segmentation, the class names."""

    names: list[str]
    has_masks: bool
    classes: list[str]


def split_listing(annotation_file: str | os.PathLike) -> SplitListing:
    """The names of a split's images, whether it has masks, and its class names
    (`coco_classes`). PsaError as `load_coco`, and for names with whitespace or
    duplicate names.
    """
    path = Path(annotation_file)
    data = load_coco(path)
    by_image = annotations_by_image(data)
    names = [image_name(image) for image in _listed_images(path, data, by_image)]
    has_masks = any(_has_segmentation(ann) for ann in data["annotations"])
    return SplitListing(names, has_masks, coco_classes(data)[1])


def cached_split_listing(
    annotation_file: str | os.PathLike, cache_file: str | os.PathLike
) -> SplitListing:
    """`split_listing`, kept in `cache_file` (JSON) while the annotation file is unchanged.

    The cache holds the result with the annotation file's resolved path,
    size and mtime_ns; it is reused when all three match and rebuilt (and
    rewritten atomically) otherwise, or when it is missing or unreadable.
    """
    source = Path(annotation_file)
    try:
        stat = source.stat()
    except OSError:
        return split_listing(source)  # raises its one-line error
    key = {
        "format": _CACHE_FORMAT,
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    cached = _read_cache(Path(cache_file))
    if cached is not None and all(cached.get(k) == v for k, v in key.items()):
        values = [cached.get(field) for field in SplitListing._fields]
        if all(isinstance(v, t) for v, t in zip(values, (list, bool, list), strict=True)):
            return SplitListing(*values)
    listing = split_listing(source)
    io.write_json(cache_file, {**key, **listing._asdict()})
    return listing


def _read_cache(path: Path) -> dict[str, Any] | None:
    """The cache's content, or None when it is missing or unreadable (then it is rebuilt)."""
    try:
        cached = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cached if isinstance(cached, dict) else None


# -- rasterising ------------------------------------------------------------------------


def _compressed_runs(counts: str) -> list[int] | None:
    """The run lengths of a compressed RLE string (pycocotools' `rleFrString`), or None
    when the string is not one. Used only to check that they add up to H x W:
    pycocotools decodes a short RLE into uninitialised memory without a word."""
    runs: list[int] = []
    position, length = 0, len(counts)
    while position < length:
        value = shift = 0
        more = True
        while more:
            if position >= length:
                return None
            char = ord(counts[position]) - 48
            if not 0 <= char < 64:
                return None
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle_error(label: str, message: str) -> PsaError:
    return PsaError(f"{label}: {message}; {_FIX_ANNOTATION}")


def _annotation_rle(ann: Mapping[str, Any], height: int, width: int, label: str) -> Any:
    """The annotation's segmentation as a compressed RLE of an (height, width) image, or
    None when it has none (or only rings without area)."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if not seg:
        return None
    if isinstance(seg, list):
        rings = []
        for ring in seg:
            if not isinstance(ring, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in ring
            ):
                raise _rle_error(label, "a polygon is not a list of numbers")
            if len(ring) % 2:
                raise _rle_error(label, f"a polygon has an odd count of numbers ({len(ring)})")
            if not all(math.isfinite(v) for v in ring):
                raise _rle_error(label, "a polygon holds a non-finite number")
            if len(ring) >= 6:  # fewer than 3 points: no area (see the module docstring)
                rings.append([float(v) for v in ring])
        if not rings:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(rings, height, width))
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise _rle_error(label, "segmentation is neither polygons nor an RLE")
    if seg["size"] != [height, width]:
        raise _rle_error(
            label, f"RLE size {seg['size']} is not the image's [height, width] [{height}, {width}]"
        )
    counts = seg["counts"]
    if isinstance(counts, list):
        runs = counts if all(_is_int(c) for c in counts) else None
    elif isinstance(counts, str):
        runs = _compressed_runs(counts)
    else:
        runs = None
    if runs is None or any(r < 0 for r in runs):
        raise _rle_error(label, "RLE counts are neither a list of run lengths nor an RLE string")
    if sum(runs) != height * width:
        raise _rle_error(
            label, f"RLE runs cover {sum(runs)} pixels, not {height} x {width} = {height * width}"
        )
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii")}


def rasterise(
    data: Mapping[str, Any],
    image_entry: Mapping[str, Any],
    anns: Sequence[Mapping[str, Any]],
    class_index: Mapping[int, int] | None = None,
) -> np.ndarray:
    """The GT mask of one image from its annotations (the rules: module docstring).

    Args:
        data: the annotation file's content (`load_coco`); its classes give
            `class_index` when that is None.
        image_entry: the image's entry of `data["images"]` (`height`, `width`).
        anns: the image's annotations.
        class_index: category id -> class index 1..K (`class_indices(data)`).

    Returns:
        (H, W) uint8: 0 background, c for class c, 255 crowd not under an
        instance. PsaError (one line naming the annotation) for a malformed
        segmentation.
    """
    from pycocotools import mask as mask_utils

    if class_index is None:
        class_index = class_indices(data)
    height, width = int(image_entry["height"]), int(image_entry["width"])
    mask = np.full((height, width), BACKGROUND_INDEX, dtype=np.uint8)
    instances = []
    for position, ann in enumerate(anns):
        ann_id = ann.get("id", position)
        label = f"annotation {ann_id} (image {image_entry['file_name']})"
        rle = _annotation_rle(ann, height, width, label)
        if rle is None:
            continue
        if ann.get("iscrowd"):
            mask[_decode(rle)] = IGNORE_INDEX
        else:
            area = int(mask_utils.area(rle))
            instances.append((-area, ann_id, position, class_index[ann["category_id"]], rle))
    # Largest first, so smaller objects on top of larger ones stay visible; they also
    # cover the crowd regions painted above.
    instances.sort(key=lambda item: item[:3])
    for *_, index, rle in instances:
        mask[_decode(rle)] = index
    return mask


def _decode(rle: Any) -> np.ndarray:
    """(H, W) bool pixels of a compressed RLE (`pycocotools.mask.decode`)."""
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():
        # pycocotools' decode asks numpy 2 for copy=False, which its array class does not
        # take; numpy falls back to a copy and warns each call. Harmless, and not ours.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(rle) > 0


# -- converting a split -----------------------------------------------------------------


def image_folder(images_pattern: str, split: str) -> str:
    """The images pattern filled in with the split; PsaError for another placeholder."""
    try:
        return images_pattern.format(split=split)
    except (KeyError, IndexError, ValueError) as exc:
        raise PsaError(
            f"images pattern {images_pattern!r} (dataset.coco_images): cannot fill it in "
            f"({type(exc).__name__}: {exc}); use {{split}} as its only placeholder"
        ) from None


def convert_split(
    annotation_file: str | os.PathLike,
    root: str | os.PathLike,
    images_pattern: str,
    split: str,
    out_sheet: str | os.PathLike,
    out_masks: str | os.PathLike,
) -> dict[str, int]:
    """Write a split's sample sheet and GT masks (the rules: module docstring).

    Args:
        annotation_file: the split's COCO annotation file.
        root: the dataset root (must exist; the image files are not checked).
        images_pattern: the image folder relative to `root`, `{split}` filled in.
        split: the split's name, e.g. train2014.
        out_sheet: the sample sheet to write (TSV).
        out_masks: the folder of masks to write (replaced whole).

    Returns:
        counts: `images` (listed), `left_out` (no annotation), `classes`,
        `masks` (written), `annotations`, `crowd` (crowd annotations on listed
        images), `without_segmentation` (annotations skipped by the masks).
    """
    from psa_core.data.voc import check_root

    path = Path(annotation_file)
    check_root(root)
    folder = image_folder(images_pattern, split)
    data = load_coco(path)
    _, class_names = coco_classes(data)
    index = class_indices(data)
    by_image = annotations_by_image(data)
    listed = _listed_images(path, data, by_image)
    has_masks = any(_has_segmentation(ann) for ann in data["annotations"])
    masks_dir = Path(os.path.abspath(out_masks))
    rows = ["\t".join(sheet.COLUMNS)]
    with io.atomic_dir(out_masks) as tmp:
        for image in listed:
            name, anns = image_name(image), by_image[image["id"]]
            present = sorted({index[ann["category_id"]] for ann in anns})
            tags = sheet.TAG_SEPARATOR.join(class_names[c - 1] for c in present)
            mask_cell = ""
            if has_masks:
                try:
                    mask = rasterise(data, image, anns, index)
                except PsaError as exc:
                    raise PsaError(f"{path}: {exc}") from None
                io.write_mask(tmp / f"{name}.png", mask)
                mask_cell = str(masks_dir / f"{name}.png")
            image_path = str(PurePath(folder) / image["file_name"])
            rows.append("\t".join((image_path, tags, split, mask_cell)))
    io.write_lines(out_sheet, rows)
    on_listed = [ann for image in listed for ann in by_image[image["id"]]]
    return {
        "images": len(listed),
        "left_out": len(data["images"]) - len(listed),
        "classes": len(class_names),
        "masks": len(listed) if has_masks else 0,
        "annotations": len(on_listed),
        "crowd": sum(1 for ann in on_listed if ann.get("iscrowd")),
        "without_segmentation": sum(1 for ann in on_listed if not _has_segmentation(ann)),
    }
