"""Dataset index: image-level labels of a split, the labels artifact, the image list, shards.

The labels artifact is plain JSON (no pickles), one per split::

    {"classes": ["aeroplane", ...], "images": {"2007_000032": [0, 14], ...}}

`images` maps each name, in list order, to the 0-based ids of the classes
present.

The image list artifact (`images.txt`) is the one place later stages learn
where an image and its ground-truth mask are: one line per image,
`NAME<TAB>IMAGE<TAB>MASK`, the paths relative to the dataset folder (or
absolute), MASK empty when the image has none. A line holding only `NAME`
(a list written by hand) means the VOC layout: `JPEGImages/NAME.jpg` and the
mask found by `voc.gt_mask_path`. Shards cut the ordered name list into consecutive pieces so that
inference fans out one job per shard (docs/design.md §2); each shard gets its own
index (image list + labels), so that a longer list reruns only the shards
whose names changed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from psa_core import io
from psa_core.constants import VOC_CLASSES
from psa_core.data import voc
from psa_core.errors import PsaError

CLASSES_FILE = "classes.txt"
"""Optional file in the dataset root: one class name per line, in label order."""

_BACKGROUND_NAMES = frozenset({"background", "_background_", "__background__"})


def read_classes(root: str | os.PathLike, classes: Sequence[str] | None = None) -> list[str]:
    """Class names in label order (K of them, background excluded).

    An explicit non-empty `classes` wins; else `root/classes.txt` (one name a
    line) when present; else the 20 VOC classes. PsaError for duplicate or
    background names, or a missing root when the file has to be looked up.
    """
    if classes:
        names = [str(c).strip() for c in classes]
        where = "dataset.classes in config.yaml"
    else:
        root = voc.check_root(root)
        path = root / CLASSES_FILE
        if not path.is_file():
            return list(VOC_CLASSES)
        names = io.read_lines(path)
        where = str(path)
        if not names:
            raise PsaError(f"{path}: no class names; list one class per line or delete the file")
    seen: set[str] = set()
    for name in names:
        if not name:
            raise PsaError(f"{where}: empty class name; remove it")
        if name.lower() in _BACKGROUND_NAMES:
            raise PsaError(
                f"{where}: lists '{name}'; list the foreground classes only "
                "(background is always index 0)"
            )
        if name in seen:
            raise PsaError(f"{where}: class '{name}' is listed twice; remove the duplicate")
        seen.add(name)
    return names


def verified_image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image after checking that `io.read_image` accepts it.

    The same rules as `io.read_image` (pixel limit, modes, a decode to the
    end), through the same functions. JPEGs decode in draft mode (DCT
    scaling to 1/8), which still reads the whole entropy-coded stream, so a
    truncated or garbage file fails here at a fraction of a full decode's cost.
    """
    with io.open_image(path, "image") as img:
        size = img.size
        if img.format == "JPEG":
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        io.image_rgb(img, path)
    return size


def verified_pair(image: Path, mask: Path | None) -> np.ndarray | None:
    """Check that an existing image decodes (`verified_image_size`) and that its mask, if
    any, decodes and has the image's size; returns the mask's class indices (or None).
    PsaError (one line naming the file) otherwise."""
    width, height = verified_image_size(image)
    if mask is None:
        return None
    indices = io.read_mask(mask)
    if indices.shape != (height, width):
        raise PsaError(
            f"{mask}: mask is {indices.shape[1]}x{indices.shape[0]} but image {image.name} is "
            f"{width}x{height} (width x height); fix or replace the mask"
        )
    return indices


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """Where an image is, and its ground-truth mask (None: the image has none)."""

    image: Path
    mask: Path | None


def voc_files(root: str | os.PathLike, name: str) -> ImageFiles:
    """The files of `name` in the VOC layout under `root`."""
    return ImageFiles(voc.image_path(root, name), voc.gt_mask_path(root, name))


LIST_SEPARATOR = "\t"


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path.resolve())


def write_image_list(
    path: str | os.PathLike, root: str | os.PathLike, files: Mapping[str, ImageFiles]
) -> None:
    """Write the image list artifact (see the module docstring), atomically, in `files` order."""
    root = Path(root)
    lines = []
    for name, where in files.items():
        mask = "" if where.mask is None else _relative(Path(where.mask), root)
        lines.append(LIST_SEPARATOR.join([name, _relative(Path(where.image), root), mask]))
    io.write_lines(path, lines)


def _list_fields(path: str | os.PathLike) -> list[list[str]]:
    # read_lines strips each line: an empty MASK takes its tab with it
    fields = [line.split(LIST_SEPARATOR) for line in io.read_lines(path)]
    for number, parts in enumerate(fields, start=1):
        if len(parts) == 2:
            parts.append("")
        if len(parts) not in (1, 3) or not parts[0]:
            raise PsaError(
                f"{path}, line {number}: not NAME or NAME<TAB>IMAGE<TAB>MASK; delete the file "
                "and rerun `psa index`"
            )
    return fields


def listed_names(path: str | os.PathLike) -> list[str]:
    """The image names of an image list artifact, in list order."""
    return [parts[0] for parts in _list_fields(path)]


def listed_files(path: str | os.PathLike, root: str | os.PathLike) -> dict[str, ImageFiles]:
    """Name -> its files for every line of an image list artifact, in list order; paths
    resolved against `root` (a NAME-only line: the VOC layout, `voc_files`)."""
    root = Path(root)
    files: dict[str, ImageFiles] = {}
    for parts in _list_fields(path):
        if len(parts) == 1:
            files[parts[0]] = voc_files(root, parts[0])
        else:
            name, image, mask = parts
            files[name] = ImageFiles(root / image, root / mask if mask else None)
    return files


def index_split(
    root: str | os.PathLike,
    split: str,
    classes: Sequence[str],
    *,
    shard: int | None = None,
    shard_size: int | None = None,
) -> dict[str, tuple[np.ndarray, ImageFiles]]:
    """Check every image of a split (or of one shard of it) and collect its image-level labels.

    For each listed name: the image must exist and decode; labels come from
    `Annotations/NAME.xml` when it exists (as in PSA), else from the GT mask;
    a GT mask, when present, must have the image's size.

    Args:
        root: dataset root in the VOC layout.
        split: list name (see `voc.read_image_list`).
        classes: K class names in label order.
        shard, shard_size: index only shard `shard` of the list (`select_shard`);
            both None (the default) for the whole list.

    Returns:
        name -> ((K,) uint8 multi-hot, its `ImageFiles`), in list order.
        PsaError (one line naming the file and the fix) at the first bad image
        or a shard the list lacks.
    """
    root = voc.check_root(root)
    list_file = voc.image_list_path(root, split)
    names = voc.read_image_list(root, split)  # its errors name the list already
    try:
        names = select_shard(names, shard, shard_size)
    except PsaError as exc:
        raise PsaError(f"{list_file}: {exc}") from None
    labels: dict[str, tuple[np.ndarray, ImageFiles]] = {}
    for name in names:
        img_file = voc.image_path(root, name)
        if not img_file.is_file():
            raise PsaError(
                f"{img_file}: image listed in {list_file} not found; add the image or remove "
                "it from the list"
            )
        mask_file = voc.gt_mask_path(root, name)
        mask = verified_pair(img_file, mask_file)
        xml_file = voc.annotation_path(root, name)
        files = ImageFiles(img_file, mask_file)
        if xml_file.is_file():
            labels[name] = (voc.labels_from_xml(xml_file, classes), files)
        elif mask is not None:
            labels[name] = (voc.labels_from_mask(mask, len(classes), mask_file), files)
        else:
            raise PsaError(
                f"{xml_file}: no annotation and no GT mask for image '{name}' (listed in "
                f"{list_file}); add one or remove the image from the list"
            )
    return labels


def write_labels(
    path: str | os.PathLike, classes: Sequence[str], labels: Mapping[str, np.ndarray]
) -> None:
    """Write the labels artifact (JSON, see the module docstring), atomically.

    Args:
        classes: K class names.
        labels: name -> (K,) multi-hot (any numeric dtype; > 0 means present).
    """
    num_classes = len(classes)
    images: dict[str, list[int]] = {}
    for name, label in labels.items():
        label = np.asarray(label).reshape(-1)
        if label.shape != (num_classes,):
            raise ValueError(
                f"labels of '{name}' have shape {label.shape}, expected ({num_classes},)"
            )
        images[str(name)] = [int(i) for i in np.flatnonzero(label > 0)]
    io.write_json(path, {"classes": [str(c) for c in classes], "images": images})


def read_labels(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read a labels artifact written by `write_labels`.

    Returns:
        (classes, name -> (K,) float32 multi-hot), names in file order.
        PsaError for a missing, corrupt or malformed file.
    """
    path = Path(path)
    data = io.read_json(path)
    fix = "delete it and rerun `psa index`"
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise PsaError(f"{path}: not a labels file (no 'classes' list); {fix}")
    classes = data["classes"]
    if not classes or not all(isinstance(c, str) for c in classes):
        raise PsaError(f"{path}: 'classes' must be a non-empty list of names; {fix}")
    images = data.get("images")
    if not isinstance(images, dict):
        raise PsaError(f"{path}: not a labels file (no 'images' mapping); {fix}")
    num_classes = len(classes)
    labels: dict[str, np.ndarray] = {}
    for name, ids in images.items():
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_classes for i in ids
        ):
            raise PsaError(
                f"{path}: labels of '{name}' must be class ids in 0..{num_classes - 1}; {fix}"
            )
        label = np.zeros(num_classes, dtype=np.float32)
        label[ids] = 1.0
        labels[name] = label
    return list(classes), labels


def num_shards(n_images: int, shard_size: int) -> int:
    """Number of shards of `shard_size` images that cover `n_images` (the last may be short)."""
    if shard_size < 1:
        raise PsaError(f"dataset.shard_size is {shard_size}; set it to 1 or more in config.yaml")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    return math.ceil(n_images / shard_size)


def shard_slice(names: Sequence[str], shard_size: int, shard_index: int) -> list[str]:
    """Names of shard `shard_index`: `names[i * s:(i + 1) * s]`; PsaError when out of range."""
    count = num_shards(len(names), shard_size)
    if not 0 <= shard_index < count:
        have = f"shards 0..{count - 1}" if count else "no shards"
        raise PsaError(
            f"shard {shard_index} does not exist: {len(names)} images in shards of {shard_size} "
            f"give {have}; rerun the index step or fix the shard number"
        )
    start = shard_index * shard_size
    return list(names[start : start + shard_size])


def select_shard(names: Sequence[str], shard: int | None, shard_size: int | None) -> list[str]:
    """The names of shard `shard` (`shard_slice`), or all of `names` when both are None.

    What `--shard N --shard-size S` of `psa index` and `psa infer-cam` select:
    the workflow's per-shard jobs pass both, a whole list needs neither.
    PsaError when only one of the two is given.
    """
    if shard is None and shard_size is None:
        return list(names)
    if shard is None or shard_size is None:
        raise PsaError(
            "--shard and --shard-size go together: give both for one shard of the list, "
            "or neither for the whole list"
        )
    return shard_slice(names, shard_size, shard)


def check_names(names: Sequence[str], labels: Mapping[str, np.ndarray], what: str) -> None:
    """PsaError unless `names` is non-empty and every name has labels."""
    if not names:
        raise PsaError(f"{what}: the image list is empty; check the split or the image list file")
    missing = [n for n in names if n not in labels]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise PsaError(
            f"{what}: {len(missing)} image(s) have no labels ({shown}); rerun `psa index` so the "
            "image list and the labels file match"
        )


def image_paths(images: str | os.PathLike | Mapping[str, Path], names: Sequence[str]) -> list[Path]:
    """The image file of every name, all checked to exist (one error naming the first missing).

    `images`: name -> image file (from `listed_files`), or a dataset folder in
    the VOC layout."""
    if isinstance(images, Mapping):
        unknown = [n for n in names if n not in images]
        if unknown:
            raise PsaError(
                f"image '{unknown[0]}' is not in the image list ({len(unknown)} missing); rerun "
                "`psa index` so the image list and the names match"
            )
        paths = [Path(images[n]) for n in names]
    else:
        paths = [Path(voc.image_path(images, n)) for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise PsaError(
            f"{missing[0]}: image not found ({len(missing)} missing); check the dataset root "
            "and the image list"
        )
    return paths
