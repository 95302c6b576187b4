"""Dataset stage drivers: the synthetic dataset and the split index (workflow/rules/data.smk)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from psa_core.data import generate_synthetic, index_split, read_classes, write_labels
from psa_core.io import write_lines
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
    split: str,
    shard: Shard,
    dataset: Annotated[DatasetSettings, Keys("classes")],
    out_images: Path,
    out_labels: Path,
) -> None:
    """`psa index`: list a split's images and their image-level labels.

    With `shard`: only the images of that shard of the split
    (`psa_core.data.select_shard`), the index of one per-shard job.

    Args:
        root: the dataset folder (VOC layout).
        split: the split's name, e.g. train, val, train_aug.
        out_images: the image list to write (.txt).
        out_labels: the labels to write (.json).
    """
    class_names = read_classes(root, dataset.classes)
    labels = index_split(root, split, class_names, shard=shard.shard, shard_size=shard.shard_size)
    write_labels(out_labels, class_names, labels)
    write_lines(out_images, list(labels))
    where = f"split {split}" if shard.shard is None else f"split {split}, shard {shard.shard}"
    log.info("%s: %d images, %d classes", where, len(labels), len(class_names))
