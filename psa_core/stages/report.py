"""Report stage: the gallery of examples the Snakemake report shows (workflow/rules/report.smk)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psa_core import io
from psa_core.settings import ReportSettings
from psa_core.stages.common import LabelledImages, mask_files, shard_index

log = logging.getLogger("psa")


def pick_examples(names: Sequence[str], count: int) -> list[str]:
    """`count` names spread evenly over the list (first and last included), in list order."""
    if count < 1 or not names:
        return []
    if count >= len(names):
        return list(names)
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in dict.fromkeys(picks.tolist())]


def gallery(
    *,
    data: LabelledImages,
    cams: Sequence[Path],
    crf: Sequence[Path],
    masks: Sequence[Path],
    seg_masks: Sequence[Path] | None,
    report: ReportSettings,
    out: Path,
) -> None:
    """`psa gallery`: image, ground truth, CAM, CRF labels, random-walk mask (and, with
    `seg_masks`, the segmentation network's mask) side by side.

    Every panel is shown at the CAMs' size: the image, its ground truth and
    the network's mask of an image above `dataset.max_side` are scaled to its
    working size (docs/design.md §1.8).

    Args:
        cams: the split's CAM shards.
        crf: the split's CRF shards.
        masks: the split's random-walk mask folders.
        seg_masks: the split's segmentation-network mask folders.
        out: the picture to write (.png).
    """
    from psa_core.affinity import HIGH, LOW, crf_label_map
    from psa_core.plots import GALLERY_COLUMNS, gallery_figure  # matplotlib: only when drawing
    from psa_core.transforms import to_size_of

    def at_cam_size(array: np.ndarray, size_hw: tuple[int, int], how: str) -> np.ndarray:
        scaled = to_size_of(array, size_hw, how)
        return array if scaled is None else scaled  # a mismatch shows as it is

    classes, files = data.classes(), data.files()
    names = pick_examples(list(files), report.gallery_size)
    cam_where = shard_index(cams, names, "CAM")
    crf_where = shard_index(crf, names, "CRF")
    walk_files = mask_files(masks, names, "random_walk")
    seg_files = mask_files(seg_masks, names, "infer_seg") if seg_masks else {}
    rows = []
    for name in names:
        cam_maps, _ = io.read_score(cam_where[name], name)
        stack, class_ids = io.read_score(crf_where[name], name)
        height, width = size = cam_maps.shape[1:]
        row = {
            "name": name,
            "image": at_cam_size(io.read_image(files[name].image), size, "bilinear"),
            "CAM": cam_maps.max(axis=0) if len(cam_maps) else np.zeros((height, width), np.float32),
            "CRF labels": crf_label_map(stack[LOW], stack[HIGH], class_ids),
            "random walk": io.read_mask(walk_files[name]),
        }
        if seg_files:
            row["segmentation network"] = at_cam_size(
                io.read_mask(seg_files[name]), size, "nearest"
            )
        if files[name].mask is not None:  # the column shows only where a mask exists
            row["ground truth"] = at_cam_size(io.read_mask(files[name].mask), size, "nearest")
        rows.append(row)
    columns = GALLERY_COLUMNS if seg_files else GALLERY_COLUMNS[:-1]
    with_truth = sum("ground truth" in row for row in rows)
    if not with_truth:  # a split without masks: no empty column
        columns = tuple(c for c in columns if c != "ground truth")
    gallery_figure(rows, classes, out, columns=columns)
    log.info(
        "gallery of %d images (%d with a ground-truth mask) written to %s; columns: %s",
        len(rows), with_truth, out, ", ".join(columns),
    )  # fmt: skip
