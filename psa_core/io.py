"""All file I/O of the pipeline: images, masks, JSON, weights, CAM shards.

Every artifact is written atomically: to a temporary name in the same folder,
then renamed over the target, so a killed job never leaves a file that looks
complete and never damages a finished one (docs/design.md §2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from psa_core import __version__
from psa_core.constants import voc_palette
from psa_core.errors import PsaError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    On any exception (or KeyboardInterrupt) the temporary file is removed and
    `path` is left as it was.
    """
    target = Path(path)
    if target.is_dir():
        raise PsaError(f"{target}: is a folder; give the path of a file to write")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual mode
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:  # name the file the user asked for, not our temporary
        tmp.unlink(missing_ok=True)
        if exc.filename in (None, str(tmp)) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    On any exception the temporary folder is removed and `path` is left as it
    was, so a killed job never leaves a folder that looks complete.
    """
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    old = target.with_name(f".{target.name}.old.tmp")
    try:
        yield tmp
        if target.exists():  # move the finished one aside whole, never half-delete it
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


_TEMPORARY = r"\.{name}\.(?:[A-Za-z0-9_]{{8}}|old)\.tmp"
"""The names `atomic_path` and `atomic_dir` give their temporaries beside an output `name`
(tempfile's 8 random characters, or the finished folder moved aside)."""


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer of `path` left beside it (`atomic_path`/`atomic_dir`
    temporaries); returns what was removed. Call it only while holding `output_lock(path)`:
    then no other job is writing `path`."""
    import re
    import shutil

    target = Path(path)
    pattern = re.compile(_TEMPORARY.format(name=re.escape(target.name)))
    if not target.parent.is_dir():
        return []
    stale = sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))
    for leftover in stale:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive OS lock on output `path` for the block: a second job that would
    write the same output stops at once with one line, whatever happened to Snakemake's
    own locks. The lock is the hidden file `.NAME.lock` beside `path`, removed on exit; a
    killed holder's lock dies with its process (flock), so nothing stale ever blocks."""
    import fcntl

    target = Path(path)
    made = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PsaError(
                f"{target}: another psa job is writing it now (lock {lock}); run one "
                "workflow per output folder at a time (or wait for that job to finish)"
            ) from None
        try:  # the holder before us may have removed the file after we opened it
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # while still held: a job that opened it before fails its check
        os.close(fd)
        for folder in made:  # a job that wrote nothing leaves no trace
            with contextlib.suppress(OSError):
                folder.rmdir()


def provenance(**values: Any) -> dict[str, Any]:
    """Attributes stored with an artifact: the code version plus `values`."""
    return {"psa_core_version": __version__, **values}


# -- JSON / text ------------------------------------------------------------


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: file not found; run the step that makes it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PsaError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); delete it and rerun"
        ) from None


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Write one line per entry, UTF-8 whatever the locale (what `read_lines` reads)."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content, a leading byte-order mark dropped.

    Windows editors start UTF-8 files with a BOM (U+FEFF); kept, it would
    glue itself invisibly to the first name of a list. PsaError (one line
    naming the file) when the file is missing, unreadable or not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: file not found; check the path or run the step that makes it")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise PsaError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise PsaError(f"{path}: cannot read the file ({exc.strerror}); check it") from None


def read_lines(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a UTF-8 text file (`read_text`), each stripped.

    Inner whitespace is kept: a line is one entry, never split into words.
    """
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


# -- images and masks -------------------------------------------------------

MAX_IMAGE_PIXELS = 89_478_485
"""Default limit on an image's or mask's width x height: PIL's own warning limit
(a quarter gigabyte of RGB). Above it a file is refused as a possible
decompression bomb (a small file that decodes to gigabytes)."""

MAX_IMAGE_PIXELS_ENV = "PSA_MAX_IMAGE_PIXELS"
"""Environment variable that overrides `MAX_IMAGE_PIXELS`; the workflow sets it
from `max_image_pixels` in config.yaml."""

# `check_image_pixels` replaces PIL's own guard, which raises a raw
# DecompressionBombError (and warns from half its limit on) inside
# `Image.open`, before we could name the file and the setting.
Image.MAX_IMAGE_PIXELS = None

_UINT16_MAX = 65535
_RGB_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
"""8-bit modes that PIL converts to RGB itself (dropping alpha)."""
_DECODE_FIX = {
    "image": "replace it or remove it from the image list",
    "mask": "replace it",
}
_MASK_FIX = "save the mask as a palette or 8-bit grey PNG of class indices"


def max_image_pixels() -> int:
    """The pixel limit: `PSA_MAX_IMAGE_PIXELS` when set and not blank, else `MAX_IMAGE_PIXELS`.

    Read at every check, so a change of the environment applies at once.
    PsaError (one line) for a value that is no whole number of 1 or more.
    """
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise PsaError(
            f"{MAX_IMAGE_PIXELS_ENV}={raw!r}: not a whole number of pixels of 1 or more; set it "
            f"to one (e.g. {MAX_IMAGE_PIXELS}) or unset it (the workflow sets it from "
            "max_image_pixels in config.yaml)"
        )
    return limit


def check_image_pixels(path: str | os.PathLike, size: tuple[int, int]) -> None:
    """PsaError unless width x height (`size`, from the header) is within `max_image_pixels()`."""
    width, height = size
    pixels, limit = width * height, max_image_pixels()
    if pixels > limit:
        raise PsaError(
            f"{path}: {width} x {height} = {pixels} pixels is over the limit of {limit} (a guard "
            "against decompression bombs); if the image is genuine, raise max_image_pixels in "
            f"config.yaml or {MAX_IMAGE_PIXELS_ENV}"
        )


@contextlib.contextmanager
def open_image(path: str | os.PathLike, what: str = "image") -> Iterator[Image.Image]:
    """The image file at `path`, its header read and its size checked, its pixels not yet decoded.

    Every image and mask of the pipeline is opened here: the size is checked
    against `max_image_pixels()` before any decoding. A decoding error
    raised inside the block (a truncated or corrupt file) becomes PsaError.

    Args:
        what: "image" or "mask", for the messages.
    """
    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: {what} not found; check the dataset root and the image list")
    try:
        with Image.open(path) as img:
            check_image_pixels(path, img.size)
            yield img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PsaError(f"{path}: cannot decode {what} ({exc}); {_DECODE_FIX[what]}") from None


def image_rgb(img: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """The pixels of an opened image as (H, W, 3) uint8 RGB, by the rules of `read_image`."""
    mode = img.mode
    if mode in _RGB_MODES:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > _UINT16_MAX:
            raise PsaError(
                f"{path}: 32-bit integer image (mode I) holds values {low}..{high}, outside the "
                "16-bit range 0..65535; convert the image to 8 or 16 bit"
            )
        # round(v * 255 / 65535) = round(v / 257), in integers (no ties occur)
        grey = ((values.astype(np.uint32) * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise PsaError(
            f"{path}: floating-point image (mode F) has no fixed value range; convert the "
            "image to 8 or 16 bit"
        )
    raise PsaError(f"{path}: image mode {mode} is not supported; convert the image to 8-bit RGB")


def mask_indices(img: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """The pixels of an opened mask as (H, W) uint8 class indices, by the rules of `read_mask`."""
    mode = img.mode
    if mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img).astype(np.uint8)  # bool: 0 / 1
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 255:
            bad = low if low < 0 else high
            raise PsaError(
                f"{path}: mask (mode {mode}) holds value {bad}, not a class index in 0..255; "
                f"{_MASK_FIX}"
            )
        return values.astype(np.uint8)
    raise PsaError(f"{path}: mask has mode {mode}; {_MASK_FIX}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB; PsaError (one line) if it cannot be.

    Modes, by scaling, never by clipping:

    - 1, L, P, RGB, CMYK (also RGBX, YCbCr): PIL's conversion to RGB (CMYK
      without colour management);
    - LA, PA, RGBA: alpha is dropped, the colour kept as stored (not blended);
    - I;16 and its variants (I;16B, I;16L, I;16N): v -> round(v * 255 / 65535),
      so 65535 -> 255, 32768 -> 128, 257 -> 1;
    - I (32-bit integers): values within 0..65535 are taken as 16-bit and
      scaled as above; any value outside is refused;
    - F (32-bit float) is refused: a float image has no fixed range
      ([0, 1], [0, 255] and HDR are all common), so no scale is safe;
    - anything else (LAB, HSV, ...) is refused.

    Grey results are replicated to 3 channels. The Exif orientation is not
    applied. Before decoding, width x height is checked against
    `max_image_pixels()` (a decompression-bomb guard).
    """
    with open_image(path, "image") as img:
        return image_rgb(img, path)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask as (H, W) uint8 class indices; PsaError (one line) if it cannot be.

    Accepted: P (palette) and L (grey) PNGs, the usual forms; 1 (as 0 / 1);
    I;16 (and variants) and I when every value is in 0..255, taken as they
    are (class indices are never scaled). Refused with the fix: any colour
    or alpha mode (RGB, RGBA, LA, PA, CMYK, ...), F, and 16- or 32-bit
    values outside 0..255. The pixel limit applies as in `read_image`.
    """
    with open_image(path, "mask") as img:
        return mask_indices(img, path)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write (H, W) uint8 class indices as a palette PNG in VOC colours."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write (H, W, 3) uint8 RGB; JPEG for .jpg/.jpeg, else by suffix."""
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
            tmp, format=fmt or Image.registered_extensions()[path.suffix.lower()], quality=quality
        )


# -- weights ----------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torch(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Atomically `torch.save` a dict of tensors / plain values (no pickled objects)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:  # to a Python file, whose write raises the OSError of a full disk ...
            torch.save(dict(obj), f)
        except RuntimeError as exc:  # ... which torch's writer wraps on its way out
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise


def load_torch(path: str | os.PathLike, what: str = "weights") -> dict[str, Any]:
    """`torch.load(..., weights_only=True)` on CPU with one-line errors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: {what} file not found; check the path in config.yaml")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise PsaError(
            f"{path}: cannot read {what} ({type(exc).__name__}): the file is truncated, corrupt, "
            "or holds pickled objects beyond tensors; replace it with a file saved by "
            "torch.save of a plain dict of tensors (a training checkpoint: delete it)"
        ) from None
    if not isinstance(obj, dict):
        raise PsaError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


# -- CAM / score shards (HDF5) ----------------------------------------------


def write_score_shard(
    path: str | os.PathLike,
    scores: Mapping[str, tuple[np.ndarray, np.ndarray]]
    | Iterable[tuple[str, tuple[np.ndarray, np.ndarray]]],
    attrs: Mapping[str, Any],
    dtype: str = "float16",
) -> None:
    """Write one HDF5 shard: a dataset per image holding (C, H, W) scores.

    Args:
        scores: image name -> (maps (C, H, W) float, class_ids (C,) int), or
            an iterable of (name, (maps, class_ids)) pairs, written as they
            come (a stage that makes them one at a time never holds them all);
            the ids are stored as the dataset's `class_ids` attribute. Maps of
            more axes are stored as they are, chunked per leading entry
            (the CRF stage stores (2, C + 1, H, W): low- and high-alpha stacks).
        attrs: file attributes (config values); the code version is added.
        dtype: storage type, "float16" or "float32"; gzip-compressed.
    """
    import h5py

    # Built in memory (compressed), then written by Python: a full disk is then an
    # OSError naming the file, where HDF5 writing to disk fails in C and can crash.
    with h5py.File(f"{path}.in-memory", "w", driver="core", backing_store=False) as f:
        for key, value in provenance(**attrs).items():
            f.attrs[key] = _h5_attr(value)
        for name, (maps, class_ids) in scores.items() if isinstance(scores, Mapping) else scores:
            maps = np.asarray(maps, dtype=dtype)
            chunks = (1, *maps.shape[1:]) if maps.ndim >= 3 and maps.shape[0] > 0 else None
            ds = f.create_dataset(
                name, data=maps, compression="gzip", compression_opts=4, shuffle=True, chunks=chunks
            )
            ds.attrs["class_ids"] = np.asarray(class_ids, dtype=np.int64)
        f.flush()
        image = f.id.get_file_image()
    with atomic_path(path) as tmp:
        tmp.write_bytes(image)


def read_score_shard(
    path: str | os.PathLike,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Read a shard written by `write_score_shard`: ({name: (maps float32, ids)}, attrs)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: score shard not found; run the inference step that makes it")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _py_attr(v) for k, v in f.attrs.items()}
            data = {
                name: (ds[()].astype(np.float32), np.asarray(ds.attrs["class_ids"], dtype=np.int64))
                for name, ds in f.items()
            }
    except OSError as exc:
        raise PsaError(f"{path}: cannot read HDF5 shard ({exc}); delete it and rerun") from None
    return data, attrs


def read_score(
    path: str | os.PathLike, name: str, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """One image's (maps as `dtype`, class_ids) from a shard, without reading the others;
    `dtype` None keeps the stored type (float16 or float32)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                raise PsaError(f"{path}: holds no scores for image '{name}'; rerun its stage")
            ds = f[name]
            maps = ds[()] if dtype is None else ds[()].astype(dtype)
            return maps, np.asarray(ds.attrs["class_ids"], dtype=np.int64)
    except OSError as exc:
        raise PsaError(f"{path}: cannot read HDF5 shard ({exc}); delete it and rerun") from None


def read_score_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Image name → the shape of its maps, without reading them."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: score shard not found; run the inference step that makes it")
    try:
        with h5py.File(path, "r") as f:
            return {name: tuple(ds.shape) for name, ds in f.items()}
    except OSError as exc:
        raise PsaError(f"{path}: cannot read HDF5 shard ({exc}); delete it and rerun") from None


def read_score_shard_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """A shard's file attributes (provenance), without reading its maps."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: score shard not found; run the inference step that makes it")
    try:
        with h5py.File(path, "r") as f:
            return {k: _py_attr(v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise PsaError(f"{path}: cannot read HDF5 shard ({exc}); delete it and rerun") from None


def read_score_shard_names(path: str | os.PathLike) -> list[str]:
    """The image names a shard holds, without reading their maps."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: score shard not found; run the inference step that makes it")
    try:
        with h5py.File(path, "r") as f:
            return list(f)
    except OSError as exc:
        raise PsaError(f"{path}: cannot read HDF5 shard ({exc}); delete it and rerun") from None


def _h5_attr(value: Any) -> Any:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _py_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
