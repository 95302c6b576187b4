"""CAMs made by another method (SEAM, AFA, ReCAM, IRN, the PSA reference, ...) as files.

The external format
-------------------
A folder holds one file per image, `NAME.npz`, where NAME is the image's name
in the pipeline (its file stem in JPEGImages, as `psa index` lists it). Each
file is a NumPy archive (`numpy.savez` or `numpy.savez_compressed`) with two
arrays:

- `cams`: float (C, H, W), values in [0, 1] (1e-3 of rounding either side is
  tolerated and clipped): one class activation map per class, without a
  background map (the pipeline derives background itself);
- `class_ids`: integer (C,), the 0-based class of each map, in the class order
  of the run (`dataset.classes` / `<root>/classes.txt`; for VOC, 0 = aeroplane
  ... 19 = tvmonitor), each at most once.

(H, W) is the image's original size, or its working size (the size the
pipeline processes it at, longest side `dataset.max_side`, docs/design.md
§1.8); maps at the original size are scaled to the working size bilinearly.
The file must hold a map for every class of the image's labels; maps of other
classes are ignored. Files are read with `numpy.load(path, allow_pickle=False)`:
arrays only, never pickled objects. Writing one from Python:

    np.savez_compressed(f"{out_dir}/{name}.npz", cams=cams.astype(np.float32),
                        class_ids=np.asarray(ids, dtype=np.int64))

`psa export-cams` writes this format from the pipeline's CAM shards,
`psa external-cams` reads it into a CAM shard (the workflow's job when
`cam.source: external`), and `psa import-cams` converts the `.npy` files of two
reference codebases, both pickled dicts saved with `np.save` (read only with
`--allow-pickle`, since loading a pickle can run arbitrary code):

- `psa` (jiwoon-ahn/psa, infer_cls.py `--out_cam`): {class id: (H, W) map} of
  the present classes, ids 0-based, maps at the image's size;
- `irn` (jiwoon-ahn/irn, step/make_cam.py; ReCAM's make_recam.py): {"keys":
  0-based ids of the present classes, "cam": maps at a strided size,
  "high_res": (C, H, W) maps at the image's size}; "high_res" is taken, one
  map per key and no background map (a file whose "high_res" has one map more
  than "keys" has a background map first, which is dropped).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psa_core.errors import PsaError
from psa_core.io import atomic_path

CAMS_KEY = "cams"
CLASS_IDS_KEY = "class_ids"
CAM_SUFFIX = ".npz"
"""The suffix of a CAM file: NAME.npz."""

VALUE_SLACK = 1e-3
"""How far outside [0, 1] a map value may lie (rounding of another tool); it is clipped."""

NPY_FORMATS = ("psa", "irn")
"""The reference codebases whose `.npy` files `convert_npy` reads."""

_FORMAT_FIX = "write it with np.savez(path, cams=..., class_ids=...) (see psa_core/cam_files.py)"
_PICKLE_REFUSED = (
    "is a pickle (a dict saved by np.save); loading a pickle can run arbitrary code, so it "
    "is refused; pass --allow-pickle only for files from a source you trust"
)


def _reason(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- the external format ------------------------------------------------------


def write_cam_file(path: str | os.PathLike, cams: np.ndarray, class_ids: np.ndarray) -> None:
    """Write one image's maps as a CAM file (the module docstring's format), atomically.

    Args:
        cams: (C, H, W) float in [0, 1]; stored in its own float type.
        class_ids: (C,) int, 0-based class ids, stored as int64.
    """
    cams = np.asarray(cams)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if cams.ndim != 3 or class_ids.shape != (cams.shape[0],):
        raise ValueError(
            f"cams {cams.shape} and class_ids {class_ids.shape}: need (C, H, W) and (C,)"
        )
    if not np.issubdtype(cams.dtype, np.floating):
        cams = cams.astype(np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
        np.savez_compressed(f, **{CAMS_KEY: cams, CLASS_IDS_KEY: class_ids})


def read_cam_file(path: str | os.PathLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a CAM file (the module docstring's format).

    Args:
        num_classes: K, the number of classes of the run (ids must be in 0..K-1).

    Returns:
        (cams (C, H, W) float32 in [0, 1], class_ids (C,) int64), in the file's
        order. PsaError (one line naming the file and the fix) for a missing,
        unreadable or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise PsaError(
            f"{path}: CAM file not found; give every listed image a NAME.npz in the folder "
            "(`psa import-cams` converts PSA / IRN .npy files)"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PsaError(
            f"{path}: not a readable .npz archive ({_reason(exc)}); {_FORMAT_FIX}"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise PsaError(
            f"{path}: holds a single array (a .npy file), not an .npz archive of "
            f"'{CAMS_KEY}' and '{CLASS_IDS_KEY}'; {_FORMAT_FIX}"
        )
    with loaded:
        missing = [k for k in (CAMS_KEY, CLASS_IDS_KEY) if k not in loaded.files]
        if missing:
            raise PsaError(
                f"{path}: has no array '{missing[0]}' (it holds {sorted(loaded.files)}); "
                f"{_FORMAT_FIX}"
            )
        try:
            cams, class_ids = loaded[CAMS_KEY], loaded[CLASS_IDS_KEY]
        except ValueError as exc:  # an object array: numpy refuses to unpickle it
            raise PsaError(
                f"{path}: holds pickled objects ({_reason(exc)}), not plain arrays; store "
                "cams as a float array and class_ids as an int array"
            ) from None
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise PsaError(
                f"{path}: corrupt .npz archive ({_reason(exc)}); {_FORMAT_FIX}"
            ) from None
    return checked_cams(cams, class_ids, path, num_classes)


def checked_cams(
    cams: Any, class_ids: Any, path: str | os.PathLike, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`cams` and `class_ids` checked against the format, as float32 (clipped to [0, 1])
    and int64; PsaError naming `path` for what is wrong.

    Args:
        num_classes: K, to check that ids lie in 0..K-1 (None: only that they are >= 0).
    """
    cams, class_ids = np.asarray(cams), np.asarray(class_ids)
    if not (np.issubdtype(cams.dtype, np.floating) or np.issubdtype(cams.dtype, np.integer)):
        raise PsaError(f"{path}: '{CAMS_KEY}' has dtype {cams.dtype}; store float maps in [0, 1]")
    if cams.ndim != 3:
        raise PsaError(
            f"{path}: '{CAMS_KEY}' has shape {cams.shape} ({cams.ndim} axes); store (C, H, W) "
            "maps, one per class"
        )
    if not np.issubdtype(class_ids.dtype, np.integer):
        raise PsaError(
            f"{path}: '{CLASS_IDS_KEY}' has dtype {class_ids.dtype}; store 0-based class ids "
            "as integers"
        )
    if class_ids.ndim != 1:
        raise PsaError(
            f"{path}: '{CLASS_IDS_KEY}' has shape {class_ids.shape}; store a 1-D array of ids"
        )
    if cams.shape[0] != class_ids.shape[0]:
        raise PsaError(
            f"{path}: {cams.shape[0]} maps but {class_ids.shape[0]} class ids; give one id per map"
        )
    if cams.shape[0] and min(cams.shape[1:]) < 1:
        raise PsaError(f"{path}: maps of shape {cams.shape[1:]} are empty; store (H, W) maps")
    class_ids = class_ids.astype(np.int64)
    high = "" if num_classes is None else f"..{num_classes - 1}"
    bad = class_ids[(class_ids < 0) | (class_ids >= (num_classes or np.iinfo(np.int64).max))]
    if bad.size:
        raise PsaError(
            f"{path}: class id {int(bad[0])} is outside 0{high}; ids are 0-based in the run's "
            "class order, without background"
        )
    unique, counts = np.unique(class_ids, return_counts=True)
    if (counts > 1).any():
        raise PsaError(
            f"{path}: class id {int(unique[counts > 1][0])} is given twice; give each class one map"
        )
    cams = cams.astype(np.float32)
    if not np.isfinite(cams).all():
        raise PsaError(f"{path}: maps hold NaN or infinite values; store finite values in [0, 1]")
    if cams.size and (cams.min() < -VALUE_SLACK or cams.max() > 1 + VALUE_SLACK):
        raise PsaError(
            f"{path}: map values span {float(cams.min()):.4g}..{float(cams.max()):.4g}, outside "
            "[0, 1]; normalise each map (e.g. divide by its maximum) before saving"
        )
    return np.clip(cams, 0.0, 1.0, out=cams), class_ids


def cams_for_image(
    cams: np.ndarray,
    class_ids: np.ndarray,
    label: np.ndarray,
    working_hw: tuple[int, int],
    image_hw: tuple[int, int],
    path: str | os.PathLike,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """An image's maps as the CAM stage stores them: its labelled classes, at its working size.

    Args:
        cams: (C, H, W) float in [0, 1], from `read_cam_file`.
        class_ids: (C,) int 0-based ids of `cams`.
        label: (K,) multi-hot image label (> 0 = present).
        working_hw: the image's working size (`psa_core.transforms.working_size`).
        image_hw: the image's original size.
        path: the file the maps came from, for the messages.
        classes: the K class names, for the messages (optional).

    Returns:
        (maps (P, h, w) float32 in [0, 1], ids (P,) int64): one map per labelled
        class in ascending id order, at `working_hw`; as stored when (H, W) is the
        working size, else scaled bilinearly from the original size. PsaError
        when a labelled class has no map or (H, W) is neither size.
    """
    from psa_core.transforms import resize

    present = np.flatnonzero(np.asarray(label) > 0).astype(np.int64)
    where = {int(c): i for i, c in enumerate(np.asarray(class_ids).reshape(-1))}
    for c in present:
        if int(c) not in where:
            name = f"'{classes[c]}' (id {c})" if classes is not None else f"id {c}"
            have = sorted(where)
            raise PsaError(
                f"{path}: no map for class {name}, which the image's labels hold (the file has "
                f"ids {have}); save a map for every labelled class"
            )
    maps = np.asarray(cams, dtype=np.float32)[[where[int(c)] for c in present]]
    working_hw = (int(working_hw[0]), int(working_hw[1]))
    image_hw = (int(image_hw[0]), int(image_hw[1]))
    stored_hw = tuple(int(v) for v in np.asarray(cams).shape[1:3])
    if stored_hw == working_hw:
        return np.ascontiguousarray(maps), present
    if stored_hw != image_hw:
        raise PsaError(
            f"{path}: maps are {stored_hw[1]}x{stored_hw[0]} (WxH) but the image is "
            f"{image_hw[1]}x{image_hw[0]}, processed at {working_hw[1]}x{working_hw[0]}; save "
            "the maps at the image's size or its working size"
        )
    if present.size == 0:
        return np.zeros((0, *working_hw), dtype=np.float32), present
    scaled = resize(np.moveaxis(maps, 0, -1), working_hw, "bilinear").reshape(*working_hw, -1)
    return np.clip(np.moveaxis(scaled, -1, 0), 0.0, 1.0), present


# -- the reference codebases' .npy files -----------------------------------------


def _is_pickle(path: Path) -> bool:
    """Whether `np.load` would unpickle the file: no .npy header, or an object array."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
        except ValueError:
            return True  # no .npy header: numpy takes the file for a pickle
        header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        if version not in header:
            return False  # numpy itself reports what it cannot read
        try:
            _, _, dtype = header[version](f)
        except ValueError:
            return False
    return bool(dtype.hasobject)


def _from_psa(obj: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The PSA reference's {class id: (H, W) map} → (cams, ids), ids ascending."""
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty dict" if isinstance(obj, Mapping) else type(obj).__name__
        raise PsaError(
            f"{path}: holds {what}, not the PSA reference's {{class id: (H, W) map}} of the "
            "present classes; check --format"
        )
    keys = list(obj)
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in keys):
        raise PsaError(
            f"{path}: keys {keys[:5]} are not class ids; the PSA reference's dict maps 0-based "
            "ids to maps (check --format)"
        )
    maps = [np.asarray(obj[k]) for k in sorted(keys)]
    shapes = {m.shape for m in maps}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise PsaError(
            f"{path}: maps of shapes {sorted(shapes)}; the PSA reference stores one (H, W) map "
            "per class, all of the image's size"
        )
    return np.stack(maps), np.asarray(sorted(keys), dtype=np.int64)


def _from_irn(obj: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """IRN's {"keys", "cam", "high_res"} → (high_res maps, keys): one map per key."""
    if not isinstance(obj, Mapping) or not {"keys", "high_res"} <= set(obj):
        have = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise PsaError(
            f"{path}: holds {have}, not IRN's dict with 'keys' and 'high_res'; check --format "
            "(the PSA reference's files are --format psa)"
        )
    keys = np.asarray(obj["keys"]).reshape(-1)
    cams = np.asarray(obj["high_res"])
    if cams.ndim != 3:
        raise PsaError(
            f"{path}: 'high_res' has shape {cams.shape}; IRN stores (C, H, W) maps at the "
            "image's size"
        )
    # IRN stores no background map (its eval_cam.py pads one in front when reading);
    # a derived file that saved one first has a map more than keys: drop it.
    if cams.shape[0] == keys.size + 1:
        cams = cams[1:]
    elif cams.shape[0] != keys.size:
        raise PsaError(
            f"{path}: 'high_res' has {cams.shape[0]} maps for {keys.size} keys; IRN stores one "
            "map per key (the present classes), without background"
        )
    order = np.argsort(keys, kind="stable")
    return cams[order], keys[order]


_NPY_READERS: dict[str, Callable[[Any, Path], tuple[np.ndarray, np.ndarray]]] = {
    "psa": _from_psa,
    "irn": _from_irn,
}


def convert_npy(
    path: str | os.PathLike, format: str, allow_pickle: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read a reference codebase's `.npy` CAM file (the module docstring's layouts).

    Args:
        format: "psa" (jiwoon-ahn/psa infer_cls.py) or "irn" (jiwoon-ahn/irn make_cam.py).
        allow_pickle: unpickle the file; without it a pickle is refused (both
            layouts are pickled dicts), since unpickling can run arbitrary code.

    Returns:
        (cams (C, H, W) float32 clipped to [0, 1], class_ids (C,) int64 ascending),
        ready for `write_cam_file`. PsaError (one line naming the file) otherwise.
    """
    path = Path(path)
    if format not in _NPY_READERS:
        raise PsaError(f"format '{format}': use one of {', '.join(NPY_FORMATS)}")
    if not path.is_file():
        raise PsaError(f"{path}: file not found; check the folder of .npy files")
    if path.stat().st_size == 0:
        raise PsaError(f"{path}: empty file; rerun the tool that wrote it")
    if _is_pickle(path) and not allow_pickle:
        raise PsaError(f"{path}: {_PICKLE_REFUSED}")
    try:
        loaded = np.load(path, allow_pickle=allow_pickle)
    except Exception as exc:  # unpickling raises anything its content chooses
        raise PsaError(
            f"{path}: cannot read ({_reason(exc)}); check that it is a .npy file of the "
            f"{format} reference (IRN's need torch to unpickle)"
        ) from None
    if not isinstance(loaded, np.ndarray) or loaded.dtype != object or loaded.shape != ():
        shape = getattr(loaded, "shape", None)
        raise PsaError(
            f"{path}: holds a plain array of shape {shape}, not the dict that the {format} "
            "reference saves; check --format, or store it as NAME.npz (cams, class_ids)"
        )
    cams, class_ids = _NPY_READERS[format](loaded.item(), path)
    cams = np.asarray(cams, dtype=np.float32)
    if np.isfinite(cams).all():
        np.clip(cams, 0.0, 1.0, out=cams)  # the references normalise by max + 1e-5
    return checked_cams(cams, class_ids, path)
