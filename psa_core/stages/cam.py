"""CAM stage (docs/design.md §1.1, §1.5): train the classifier, multi-scale CAMs per shard,
CAM evaluation over a background-threshold sweep (workflow/rules/cam.smk).

`train_cam`, `infer_cam` and `evaluate_cam` are the drivers the `psa`
subcommands of the same names call; the library they call is `psa_core.cam`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    as_dict,
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
    from psa_core.training import digest, result_settings

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

    # one training: the same whatever the attempts (its checkpoint and record hold it)
    one = dataclasses.replace(cam, attempts=1, retry_above=CamSettings().retry_above)

    def fit(files: TrainingFiles, run: RunSettings) -> None:
        net = model_to_train("cam", len(classes), files, model, run)
        fit_cam(
            net, images, names, label_map, one, val_names=val_names, **loop_keywords(files, run)
        )

    if cam.attempts == 1:
        fit(files, run)
    else:
        key = {"cam": result_settings(one), "model": as_dict(model), "init": str(files.init)}
        key |= {"names": names, "val_names": val_names}
        key["labels"] = [label_map[name].tolist() for name in names + (val_names or [])]
        _fit_attempts(
            fit, files, run, cam, digest(key), _label_matrices(label_map, names, val_names)
        )
    _report_classifier(files.out_log, label_map, names, val_names)


def _label_matrices(
    labels: Mapping[str, np.ndarray], names: Sequence[str], val_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, K) label matrices of the training images and of the validation images (or None)."""
    train = np.stack([labels[name] for name in names])
    return train, np.stack([labels[name] for name in val_names]) if val_names else None


def _attempt_files(files: TrainingFiles, attempt: int) -> TrainingFiles:
    """Attempt `attempt`'s files beside the run's: NAME.attemptN.EXT."""

    def beside(path: Path) -> Path:
        return path.with_name(f"{path.stem}.attempt{attempt}{path.suffix}")

    return dataclasses.replace(
        files,
        checkpoint=beside(files.checkpoint),
        out_log=beside(files.out_log),
        out=beside(files.out),
    )


def _fit_attempts(
    fit: Callable[[TrainingFiles, RunSettings], None],
    files: TrainingFiles,
    run: RunSettings,
    cam: CamSettings,
    key: str,
    labels: tuple[np.ndarray, np.ndarray | None],
) -> None:
    """`cam.attempts`: train at seeds run.seed, run.seed + 1, ... until a final loss is at
    most `cam.retry_above` of the constant guess's, then keep the lowest-loss attempt as
    `files.out` and `files.out_log`.

    Each attempt trains resumably into its own files (`_attempt_files`); a finished one is
    recorded in NAME.attemptN.json with `key` (the run's settings but the attempts', data
    and initial weights)
    and its seed, so that a resumed job skips it and a job of other settings trains it again.
    Every attempt's files are deleted once the kept one is in place.
    """
    from psa_core.evaluate import loss_and_guess

    tried: list[tuple[float, int, TrainingFiles]] = []
    for attempt in range(cam.attempts):
        seed = run.seed + attempt
        paths = _attempt_files(files, attempt)
        record = paths.out.with_suffix(".json")
        expected = {"key": key, "seed": seed}
        done = record.is_file() and paths.out.is_file() and paths.out_log.is_file()
        if not (done and {k: io.read_json(record).get(k) for k in expected} == expected):
            record.unlink(missing_ok=True)
            fit(paths, dataclasses.replace(run, seed=seed))
            io.write_json(record, expected)
        phase, loss, guess = loss_and_guess(paths.out_log, *labels)
        tried.append((loss / guess if loss == loss else float("inf"), attempt, paths))
        log.info(
            "train-cam: attempt %d of at most %d (seed %d): final %s loss %.3f, %.1f%% of a "
            "constant guess's %.3f",
            attempt + 1, cam.attempts, seed, phase, loss, 100 * loss / guess, guess,
        )  # fmt: skip
        if tried[-1][0] <= cam.retry_above:
            break
    share, best, kept = min(tried, key=lambda item: item[:2])
    if len(tried) > 1:
        (log.info if share <= cam.retry_above else log.warning)(
            "train-cam: kept attempt %d of %d (%.1f%% of the constant guess; cam.retry_above "
            "%.0f%%)",
            best + 1, len(tried), 100 * share, 100 * cam.retry_above,
        )  # fmt: skip
    os.replace(kept.out_log, files.out_log)
    os.replace(kept.out, files.out)
    for paths in (_attempt_files(files, attempt) for attempt in range(cam.attempts)):
        # also those of attempts not reached this time (left by a killed job)
        for path in (paths.out, paths.out_log, paths.out.with_suffix(".json"), paths.checkpoint):
            path.unlink(missing_ok=True)


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

    try:
        row, nothing = classifier_check("", log_csv, *_label_matrices(labels, names, val_names))
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
