"""CAM stage (docs/design.md §1.1, §1.5): train the classifier, multi-scale CAMs per shard,
CAM evaluation over a background-threshold sweep (workflow/rules/cam.smk).

`train_cam`, `infer_cam` and `evaluate_cam` are the drivers the `psa`
subcommands of the same names call; the library they call is `psa_core.cam`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np

from psa_core import io
from psa_core.data import read_labels
from psa_core.errors import PsaError
from psa_core.settings import (
    CamEvaluateSettings,
    CamInferSettings,
    CamSettings,
    DatasetSettings,
    Keys,
    ModelSettings,
    RunSettings,
)
from psa_core.stages.common import (
    LabelledImages,
    Reports,
    Shard,
    TrainingFiles,
    loop_keywords,
    model_to_train,
    timed,
)

log = logging.getLogger("psa")

DEFAULT_DATASET = DatasetSettings()
"""`infer_cam`'s dataset section when a caller gives none (the default max_side)."""


# -- drivers ------------------------------------------------------------------


def train_cam(
    *,
    data: LabelledImages,
    val_images: Path | None,
    val_labels: Path | None,
    files: TrainingFiles,
    model: ModelSettings,
    cam: CamSettings,
    run: RunSettings,
) -> None:
    """`psa train-cam`: train the classifier on a split (resumable).

    Args:
        val_images: images whose loss is logged every epoch (optional).
        val_labels: their labels (default: the training split's).
    """
    from psa_core.cam import fit_cam

    classes, label_map = read_labels(data.labels)
    images = data.image_files()
    names, val_names = list(images), None
    if val_images:
        val_classes, val_label_map = read_labels(val_labels or data.labels)
        if val_classes != classes:
            raise PsaError(f"{val_labels}: classes differ from {data.labels}; rerun `psa index`")
        val_data = dataclasses.replace(data, images=val_images)
        val_files = val_data.image_files()
        val_names = list(val_files)
        label_map = {**val_label_map, **label_map}
        images = {**val_files, **images}
    net = model_to_train("cam", len(classes), files, model, run)
    fit_cam(net, images, names, label_map, cam, val_names=val_names, **loop_keywords(files, run))
    _report_classifier(files.out_log, label_map, names, val_names)


def _report_classifier(
    log_csv: Path,
    labels: Mapping[str, np.ndarray],
    names: Sequence[str],
    val_names: Sequence[str] | None,
) -> None:
    """Log the classifier's final loss against a constant guess of the class frequencies
    (`psa_core.evaluate.classifier_check`, the summary's first row), as a warning when
    it learned next to nothing. The training is finished and saved by then: a failure
    here is a warning, not a failed job."""
    from psa_core.evaluate import classifier_check

    train = np.stack([labels[name] for name in names])
    val = np.stack([labels[name] for name in val_names]) if val_names else None
    try:
        row, nothing = classifier_check("", log_csv, train, val)
    except PsaError as exc:
        log.warning("train-cam: no check of the final loss: %s", exc)
        return
    (log.warning if nothing else log.info)("train-cam: %s", row["note"])


def infer_cam(
    *,
    data: LabelledImages,
    weights: Path,
    shard: Shard,
    dataset: Annotated[DatasetSettings, Keys("max_side")] = DEFAULT_DATASET,
    model: ModelSettings,
    infer: CamInferSettings,
    run: Annotated[RunSettings, Keys("device", "amp")],
    out: Path,
) -> None:
    """`psa infer-cam`: multi-scale CAMs (docs/design.md §1.1) of an image list, or of one
    shard of it, into one HDF5 file.

    The workflow passes a shard's own image list (`psa index --shard`); by
    hand, `shard` picks one shard of a longer list (`psa_core.data.select_shard`).
    Each image's dataset holds the maps of its present classes only,
    (C, h, w) in [0, 1], with their 0-based ids in the `class_ids` attribute;
    (h, w) is the image's working size (`dataset.max_side`, docs/design.md §1.8).

    Args:
        weights: trained CAM weights (.pt/.pth).
        out: HDF5 shard to write.
    """
    from psa_core.cam import multiscale_cam
    from psa_core.device import autocast_dtype
    from psa_core.models import create_model
    from psa_core.transforms import to_working_size

    images = data.images
    classes, label_map, image_files, names = data.labelled_shard(shard)
    net = create_model(
        model.backbone, "cam", len(classes), checkpoint_path=weights, device=run.device
    )
    where = shard.where(images)
    log.info(
        "%s: %d images, scales %s, max side %s, device %s",
        where, len(names), infer.scales, dataset.max_side, run.device,
    )  # fmt: skip
    amp_dtype = autocast_dtype(run.amp)
    scores = {}
    with timed("CAMs", len(names)):
        for name in names:
            label = label_map[name]
            image = to_working_size(io.read_image(image_files[name]), dataset.max_side)
            cams = multiscale_cam(net, image, label, scales=infer.scales, amp_dtype=amp_dtype)
            present = np.flatnonzero(label > 0)
            # kept in the storage type: a shard's maps wait in memory until it is written
            scores[name] = (cams[present].astype(infer.dtype), present)
    io.write_score_shard(
        out,
        scores,
        attrs={
            "stage": "cam",
            "classes": classes,
            "backbone": model.backbone,
            "weights": str(weights),
            "scales": list(infer.scales),
            "amp": run.amp,
            "max_side": dataset.max_side,
            "images": str(images),
            **shard.attrs(),
        },
        dtype=infer.dtype,
    )


def iter_cam_items(
    masks: Mapping[str, Path], shards: Sequence[Path]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (cams (C, h, w), class_ids (C,), gt (h, w) uint8) for every image of `masks`
    (name -> its ground-truth mask).

    The ground truth is brought to the CAMs' size: nearest-neighbour scaled
    when the CAMs are at a working size below the image's (docs/design.md §1.8).
    One shard is in memory at a time (a VOC split's CAMs would not fit at once).
    """
    from psa_core.transforms import to_size_of

    names = list(masks)
    stored = {name for shard in shards for name in io.read_score_shard_names(shard)}
    missing = [n for n in names if n not in stored]
    if missing:
        raise PsaError(
            f"CAM shards lack {len(missing)} listed images (first: '{missing[0]}'); "
            "delete the shards and rerun inference"
        )
    wanted = set(names)
    for shard in shards:
        data, _ = io.read_score_shard(shard)
        for name, (cams, class_ids) in data.items():
            if name not in wanted:
                continue
            wanted.discard(name)  # an image stored twice counts once
            mask_file = masks[name]
            gt = io.read_mask(mask_file)
            scaled = to_size_of(gt, cams.shape[1:], "nearest")
            if scaled is None:
                raise PsaError(
                    f"{mask_file}: mask is {gt.shape[1]}x{gt.shape[0]} but its CAM is "
                    f"{cams.shape[2]}x{cams.shape[1]}; rerun inference for this dataset"
                )
            yield cams, class_ids, scaled


def evaluate_cam(
    *,
    data: LabelledImages,
    cams: Sequence[Path],
    evaluate: CamEvaluateSettings,
    reports: Reports,
    out_svg: Path,
) -> None:
    """`psa evaluate-cam`: CAM mIoU over a background-threshold sweep (docs/design.md §1.5).

    Args:
        cams: the split's CAM shards (HDF5).
        out_svg: the sweep's plot to write (.svg).
    """
    from psa_core.evaluate import evaluate_cams, write_cam_report

    classes, _ = read_labels(data.labels)
    masks = data.ground_truth()
    result = evaluate_cams(
        iter_cam_items(masks, cams),
        num_classes=len(classes) + 1,
        thresholds=evaluate.thresholds,
        published_threshold=evaluate.bg_threshold,
    )
    result.update(data.scored_counts(result["num_images"]))
    log.info("CAM mIoU: %s", {k: v for k, v in result.items() if "miou" in k})
    write_cam_report(result, ["background", *classes], reports.out_json, reports.out_csv, out_svg)
