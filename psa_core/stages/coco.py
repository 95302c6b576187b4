"""COCO stage driver: one split's annotation file to a sample sheet and GT masks
(`psa_core.data.coco`; one job per split)."""

from __future__ import annotations

import logging
from pathlib import Path

from psa_core.data.coco import convert_split

log = logging.getLogger("psa")


def coco_split(
    *, annotations: Path, root: Path, images: str, split: str, out_sheet: Path, out_masks: Path
) -> None:
    """`psa coco-split`: convert a COCO split into a sample sheet and palette-PNG GT masks.

    The rules (class order, crowd regions, overlaps, images left out) are in
    `psa_core.data.coco`.

    Args:
        annotations: the split's COCO annotation file (.json), e.g.
            ROOT/annotations/instances_train2014.json.
        root: the dataset folder (COCO layout); the sheet's image paths are relative to it.
        images: the split's image folder relative to the root, {split} filled in (e.g. {split}).
        split: the split's name, e.g. train2014, val2014.
        out_sheet: the sample sheet to write (.tsv).
        out_masks: the folder of GT masks to write (one NAME.png per listed image).
    """
    counts = convert_split(annotations, root, images, split, out_sheet, out_masks)
    log.info(
        "split %s: %d images listed, %d left out (no annotation), %d classes, %d masks written",
        split,
        counts["images"],
        counts["left_out"],
        counts["classes"],
        counts["masks"],
    )
    if counts["without_segmentation"] and counts["masks"]:
        log.warning(
            "split %s: %d of %d annotations have no segmentation; their objects are missing "
            "from the masks (they still count for the labels)",
            split,
            counts["without_segmentation"],
            counts["annotations"],
        )
