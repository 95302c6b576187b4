"""CAMs of another method (SEAM, AFA, ReCAM, IRN, the PSA reference) in and out of the
pipeline, as one NAME.npz per image (the format: `psa_core.cam_files`).

`external_cams` is the workflow's job in place of `infer_cam` when
`cam.source: external`: it writes the same CAM shard, so the CRF labels,
AffinityNet and the random walk run on the other method's CAMs unchanged.
`export_cams` and `import_cams` are tools run by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np

from psa_core import io
from psa_core.cam_files import (
    CAM_SUFFIX,
    NPY_FORMATS,
    convert_npy,
    read_cam_file,
    write_cam_file,
)
from psa_core.errors import PsaError
from psa_core.settings import CamInferSettings, DatasetSettings, Keys
from psa_core.stages.common import LabelledImages, Shard, timed

log = logging.getLogger("psa")

DEFAULT_DATASET = DatasetSettings()
"""`external_cams`' dataset section when a caller gives none (the default max_side)."""

DEFAULT_INFER = CamInferSettings()
"""`external_cams`' cam.infer section when a caller gives none (the default dtype)."""


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise PsaError(f"{path}: {what} folder not found; check the path")
    return path


def export_cams(*, cams: Sequence[Path], out: Path) -> None:
    """`psa export-cams`: CAM shards as a folder of NAME.npz files, the format another tool
    reads (psa_core/cam_files.py): each image's maps at its working size, with their ids.

    Args:
        cams: CAM shards (HDF5) from `psa infer-cam` or `psa external-cams`.
        out: the folder to write (replaced whole).
    """
    written: set[str] = set()
    with io.atomic_dir(out) as folder:
        for shard in cams:
            data, _ = io.read_score_shard(shard)
            for name, (maps, class_ids) in data.items():
                if name not in written:  # an image stored twice counts once
                    write_cam_file(folder / f"{name}{CAM_SUFFIX}", maps, class_ids)
                    written.add(name)
    log.info("%d images' CAMs written to %s", len(written), out)


def import_cams(*, format: str, source: Path, out: Path, allow_pickle: bool = False) -> None:
    """`psa import-cams`: a folder of the .npy CAM files of the PSA reference or IRN as
    NAME.npz files (psa_core/cam_files.py), for `psa external-cams`.

    Args:
        format: psa (jiwoon-ahn/psa infer_cls.py --out_cam) or irn (jiwoon-ahn/irn make_cam.py,
            also ReCAM).
        source: the folder of NAME.npy files.
        out: the folder of NAME.npz files to write (replaced whole).
        allow_pickle: unpickle the .npy files (both formats are pickles, and loading a
            pickle can run arbitrary code): only for files from a source you trust.
    """
    if format not in NPY_FORMATS:
        raise PsaError(f"--format {format}: use one of {', '.join(NPY_FORMATS)}")
    files = sorted(_folder(source, "source").glob("*.npy"))
    if not files:
        raise PsaError(f"{source}: holds no .npy files; give the folder the {format} code wrote")
    with timed("import", len(files)), io.atomic_dir(out) as folder:
        for path in files:
            maps, class_ids = convert_npy(path, format, allow_pickle)
            write_cam_file(folder / f"{path.stem}{CAM_SUFFIX}", maps, class_ids)
    log.info("%d %s files converted into %s", len(files), format, out)


def external_cams(
    *,
    data: LabelledImages,
    source: Path,
    shard: Shard,
    dataset: Annotated[DatasetSettings, Keys("max_side")] = DEFAULT_DATASET,
    infer: Annotated[CamInferSettings, Keys("dtype")] = DEFAULT_INFER,
    out: Path,
) -> None:
    """`psa external-cams`: another method's CAMs (NAME.npz files, psa_core/cam_files.py) of an
    image list, or of one shard of it, into the CAM shard `psa infer-cam` would write.

    Each image's maps of its labelled classes are kept (others dropped), brought to
    its working size (`dataset.max_side`, docs/design.md §1.8) and stored as
    `cam.infer.dtype`, with their 0-based ids.

    Args:
        source: the folder of NAME.npz files (cam.external_dir).
        out: HDF5 shard to write.
    """
    from psa_core.cam_files import cams_for_image
    from psa_core.transforms import working_size

    images = data.images
    classes, label_map, image_files, names = data.labelled_shard(shard)
    folder = _folder(source, "external CAM")
    files = {name: folder / f"{name}{CAM_SUFFIX}" for name in names}
    missing = [path for path in files.values() if not path.is_file()]
    if missing:
        raise PsaError(
            f"{source}: no CAM file for {len(missing)} listed image(s) (first: {missing[0].name}); "
            "give every image a NAME.npz (psa_core/cam_files.py; `psa import-cams` converts "
            "PSA / IRN .npy files)"
        )

    def scores() -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
        for name in names:
            with io.open_image(image_files[name]) as img:  # the header only
                width, height = img.size
            maps, class_ids = read_cam_file(files[name], len(classes))
            maps, present = cams_for_image(
                maps,
                class_ids,
                label_map[name],
                working_size(height, width, dataset.max_side),
                (height, width),
                files[name],
                classes,
            )
            yield name, (maps.astype(infer.dtype), present)

    where = shard.where(images)
    log.info(
        "%s: %d images' CAMs from %s, max side %s", where, len(names), source, dataset.max_side
    )
    with timed("external CAMs", len(names)):
        io.write_score_shard(
            out,
            scores(),
            attrs={
                "stage": "cam",
                "source": "external",
                "external_dir": str(source),
                "classes": classes,
                "max_side": dataset.max_side,
                "images": str(images),
                **shard.attrs(),
            },
            dtype=infer.dtype,
        )
