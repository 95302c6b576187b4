"""Dataset stage drivers: the synthetic dataset and the split index (workflow/rules/data.smk)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from psa_core.data import (
    ImageFiles,
    generate_synthetic,
    index_split,
    read_classes,
    select_shard,
    write_image_list,
    write_labels,
)
from psa_core.data.sheet import read_sheet, verify_rows
from psa_core.errors import PsaError
from psa_core.settings import DatasetSettings, Keys, SyntheticSettings
from psa_core.stages.common import Shard

log = logging.getLogger("psa")


def synth(*, out: Path, synthetic: SyntheticSettings) -> None:
    """`psa synth`: generate the synthetic dataset in the VOC layout.

    Args:
        out: the dataset folder to create.
    """
    generate_synthetic(
        out,
        num_train=synthetic.num_train,
        num_val=synthetic.num_val,
        image_size=synthetic.image_size,
        num_classes=synthetic.num_classes,
        seed=synthetic.seed,
    )
    log.info("synthetic dataset written to %s", out)


def index(
    *,
    root: Path,
    sheet: Path | None = None,
    split: str,
    shard: Shard,
    dataset: Annotated[DatasetSettings, Keys("classes")],
    out_images: Path,
    out_labels: Path,
) -> None:
    """`psa index`: list a split's images, where they and their masks are, and their
    image-level labels; every image (and mask) is checked to decode.

    With `shard`: only the images of that shard of the split
    (`psa_core.data.select_shard`), the index of one per-shard job.

    Args:
        root: the dataset folder (VOC layout), or the folder the sheet's paths are
            relative to.
        sheet: a sample sheet (CSV/TSV, psa_core/data/sheet.py) instead of the VOC layout.
        split: the split's name, e.g. train, val, train_aug.
        out_images: the image list to write (.txt).
        out_labels: the labels to write (.json).
    """
    if sheet is None:
        class_names = read_classes(root, dataset.classes)
        indexed = index_split(
            root, split, class_names, shard=shard.shard, shard_size=shard.shard_size
        )
        labels = {name: label for name, (label, _) in indexed.items()}
        files = {name: where for name, (_, where) in indexed.items()}
    else:
        table = read_sheet(sheet, dataset.classes, used_splits=[split])
        class_names = list(table.classes)
        try:
            rows = select_shard(table.split_rows(split), shard.shard, shard.shard_size)
        except PsaError as exc:
            raise PsaError(f"{sheet}: split {split}: {exc}") from None
        labels, paths = verify_rows(table, root, rows)
        files = {name: ImageFiles(image, mask) for name, (image, mask) in paths.items()}
    write_labels(out_labels, class_names, labels)
    write_image_list(out_images, root, files)
    where = f"split {split}" if shard.shard is None else f"split {split}, shard {shard.shard}"
    log.info("%s: %d images, %d classes", where, len(labels), len(class_names))
