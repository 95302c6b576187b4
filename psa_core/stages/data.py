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
) -> None:
    """List a split's images and their image-level labels (image list + labels JSON)."""
    from psa_core.data import index_split, read_classes, write_labels
    from psa_core.io import write_lines

    class_names = read_classes(root, classes)
    labels = index_split(root, split, class_names)
    write_labels(out_labels, class_names, labels)
    write_lines(out_images, list(labels))
    log.info("split %s: %d images, %d classes", split, len(labels), len(class_names))
