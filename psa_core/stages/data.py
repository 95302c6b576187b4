"""Dataset stage drivers: the synthetic dataset and the split index (workflow/rules/data.smk)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("psa")


def synth(
    *,
    out: Path,
    num_train: int,
    num_val: int,
    image_size: Sequence[int],
    num_classes: int,
    seed: int,
) -> None:
    """Generate the synthetic dataset in the VOC layout into `out`."""
    from psa_core.data.synthetic import generate

    generate(
        out,
        num_train=num_train,
        num_val=num_val,
        image_size=tuple(image_size),
        num_classes=num_classes,
        seed=seed,
    )
    log.info("synthetic dataset written to %s", out)


def index(
    *,
    root: Path,
    split: str,
    classes: Sequence[str] | None,
    out_images: Path,
    out_labels: Path,
    shard: int | None = None,
    shard_size: int | None = None,
) -> None:
    """List a split's images and their image-level labels (image list + labels JSON).

    With `shard` and `shard_size`: only the images of that shard of the split
    (`psa_core.data.select_shard`), the index of one per-shard job.
    """
    from psa_core.data import index_split, read_classes, write_labels
    from psa_core.io import write_lines

    class_names = read_classes(root, classes)
    labels = index_split(root, split, class_names, shard=shard, shard_size=shard_size)
    write_labels(out_labels, class_names, labels)
    write_lines(out_images, list(labels))
    where = f"split {split}" if shard is None else f"split {split}, shard {shard}"
    log.info("%s: %d images, %d classes", where, len(labels), len(class_names))
