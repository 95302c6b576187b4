"""Scoring CAMs against ground truth with a background-threshold sweep.

docs/design.md §1.1 (CAM as a segmentation) and §1.5 (evaluation). A CAM becomes
a segmentation by argmax over [constant background score, class maps]; the
sweep scores many background thresholds in one pass over the images.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from psa_core.constants import BACKGROUND_INDEX, CHANCE_SHARE, IGNORE_INDEX
from psa_core.errors import PsaError
from psa_core.io import atomic_path, write_json
from psa_core.metrics import as_class_indices, confusion_matrix, iou, top_class
from psa_core.settings import CamEvaluateSettings

PUBLISHED_BG_THRESHOLD = CamEvaluateSettings.bg_threshold
"""Background score of the published CAM evaluation (docs/design.md §1.1)."""


class CamThresholdSweep:
    """Accumulates one confusion matrix per background threshold, cheaply.

    Per image the best class and its score are found once (`top_class`).
    For threshold t a pixel is foreground (its best class) iff score > t,
    i.e. for the thresholds below its score. So each pixel is binned by how
    many thresholds lie below its score, together with its (gt, best class)
    pair: one `np.bincount` per image, however many thresholds. The matrices
    are suffix sums over those bins (`confusion_matrices`).

    Args:
        num_classes: segmentation classes, background included (K + 1).
        thresholds: background scores; evaluated in ascending order, as
            float32 like `psa_core.cam.cams_to_segmentation`.
    """

    def __init__(self, num_classes: int, thresholds: Iterable[float]) -> None:
        if num_classes < 2:
            raise PsaError(f"num_classes={num_classes}: need background plus at least one class")
        self.thresholds = sorted({float(t) for t in thresholds})
        if not self.thresholds or not all(math.isfinite(t) for t in self.thresholds):
            raise PsaError(f"thresholds {self.thresholds}: need at least one finite value")
        self.num_classes = num_classes
        self.num_images = 0
        self._thresholds32 = np.asarray(self.thresholds, dtype=np.float32)
        bins = len(self.thresholds) + 1
        self._hist = np.zeros((bins, num_classes, num_classes), dtype=np.int64)

    def add(self, cams: np.ndarray, class_ids: np.ndarray, gt: np.ndarray) -> None:
        """Count one image: cams (C, H, W) of present classes, class_ids (C,), gt (H, W)."""
        gt = np.asarray(gt)
        cams = np.asarray(cams)
        if cams.ndim != 3 or gt.shape != cams.shape[1:]:
            raise PsaError(
                f"CAMs have shape {cams.shape} but the ground truth has shape {gt.shape}; "
                "expected (C, H, W) and (H, W) of the same image"
            )
        score, index = top_class(cams, class_ids)
        if index.size and int(index.max()) >= self.num_classes:
            raise PsaError(
                f"class id {int(index.max()) - 1} is outside the {self.num_classes - 1} classes; "
                "check num_classes (background included)"
            )
        keep = gt != IGNORE_INDEX
        n = self.num_classes
        gt_index = as_class_indices(gt[keep], n, "ground truth")
        below = np.searchsorted(self._thresholds32, score[keep], side="left")
        codes = (below * n + gt_index) * n + index[keep]
        self._hist += np.bincount(codes, minlength=self._hist.size).reshape(self._hist.shape)
        self.num_images += 1

    def confusion_matrices(self) -> np.ndarray:
        """(T, N, N) int64: the confusion matrix (rows gt, cols pred) of each threshold."""
        at_least = self._hist[::-1].cumsum(axis=0)[::-1]  # [j] = bins j and above
        total = at_least[0]
        confs = at_least[1:].copy()  # threshold i: foreground where bin >= i + 1
        confs[:, :, BACKGROUND_INDEX] += (total[None] - at_least[1:]).sum(axis=2)
        return confs

    def result(self, published_threshold: float | None = None) -> dict[str, Any]:
        """The sweep as a JSON-ready dict (see `evaluate_cams`); NaN becomes None."""
        sweep = []
        for threshold, conf in zip(self.thresholds, self.confusion_matrices(), strict=True):
            miou, per_class = iou(conf)
            sweep.append(
                {
                    "threshold": threshold,
                    "miou": _json_float(miou),
                    "per_class_iou": [_json_float(v) for v in per_class],
                }
            )
        scored = [row for row in sweep if row["miou"] is not None]
        best = max(scored, key=lambda row: row["miou"]) if scored else None  # first on ties
        published = None
        if published_threshold is not None:
            matches = [r for r in sweep if r["threshold"] == float(published_threshold)]
            if not matches:
                raise PsaError(
                    f"published threshold {published_threshold} is not among the swept "
                    f"thresholds {self.thresholds}; add it to the sweep"
                )
            published = matches[0]
        return {
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "thresholds": sweep,
            "best_threshold": best["threshold"] if best else None,
            "best_miou": best["miou"] if best else None,
            "published_threshold": published["threshold"] if published else None,
            "published_miou": published["miou"] if published else None,
        }


def evaluate_cams(
    items: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    thresholds: Sequence[float],
    published_threshold: float | None = PUBLISHED_BG_THRESHOLD,
) -> dict[str, Any]:
    """mIoU of CAM segmentations over a background-threshold sweep (docs/design.md §1.5).

    Args:
        items: (cams (C, H, W) float in [0, 1] of the present classes,
            class_ids (C,) 0-based, gt (H, W) uint8 with 255 ignored) per image.
        num_classes: segmentation classes, background included (K + 1, e.g.
            21 for VOC), as in `psa_core.metrics.confusion_matrix`.
        thresholds: background scores to sweep.
        published_threshold: also evaluated (added to the sweep if missing)
            and reported on its own; None to skip.

    Returns:
        A plain dict: `num_images`, `num_classes`, `thresholds` (ascending
        list of {"threshold", "miou", "per_class_iou" (N values)}),
        `best_threshold` / `best_miou` (the lowest threshold on ties),
        `published_threshold` / `published_miou`. An IoU that is undefined
        (class absent from gt and prediction, see `psa_core.metrics.iou`) and
        an mIoU with no defined class are None.
    """
    grid = list(thresholds)
    if published_threshold is not None:
        grid.append(float(published_threshold))
    sweep = CamThresholdSweep(num_classes, grid)
    for cams, class_ids, gt in items:
        sweep.add(cams, class_ids, gt)
    return sweep.result(published_threshold)


def write_cam_report(
    result: dict[str, Any],
    class_names: Sequence[str],
    json_path: str | os.PathLike,
    csv_path: str | os.PathLike,
    svg_path: str | os.PathLike,
) -> None:
    """Write an `evaluate_cams` result as JSON, CSV and an SVG plot, atomically.

    Args:
        result: the dict from `evaluate_cams`.
        class_names: the K foreground names (background is prepended) or all
            K + 1 names, background first.
        json_path: the result plus `class_names` (K + 1 names).
        csv_path: one row per threshold: threshold, miou, one IoU column per
            class (empty where undefined).
        svg_path: mIoU against threshold, best and published thresholds marked
            (`psa_core.plots`; .svg or .png).
    """
    names = _segmentation_class_names(class_names, result["num_classes"])
    write_json(json_path, {**result, "class_names": names})

    _write_csv(
        csv_path,
        ["threshold", "miou", *names],
        (
            [_fmt(row["threshold"]), *(_cell(v) for v in (row["miou"], *row["per_class_iou"]))]
            for row in result["thresholds"]
        ),
    )

    from psa_core.plots import threshold_sweep_plot

    threshold_sweep_plot(
        result,
        svg_path,
        title=f"CAM: mIoU against the background threshold ({result['num_images']} images)",
    )


def _segmentation_class_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) == num_classes - 1:
        names = ["background", *names]
    if len(names) != num_classes:
        raise PsaError(
            f"{len(names)} class names for {num_classes} classes (background included); "
            f"give the {num_classes - 1} foreground names or all {num_classes}"
        )
    return names


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _fmt(value: float) -> str:
    return f"{value:g}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


# -- CRF label maps (docs/design.md §1.2): the supervision of AffinityNet ----------


class _ImageCounts:
    """A confusion matrix summed over images: rows the GT classes (K + 1, GT 255
    skipped), columns the predicted ones plus `EXTRA_COLUMNS`."""

    EXTRA_COLUMNS = 0

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise PsaError(f"num_classes={num_classes}: need background plus at least one class")
        self.num_classes = num_classes
        self.num_images = 0
        self.conf = np.zeros((num_classes, num_classes + self.EXTRA_COLUMNS), dtype=np.int64)

    def _iou(self, conf: np.ndarray) -> dict[str, Any]:
        miou, per_class = iou(conf)
        return {"miou": _json_float(miou), "per_class_iou": [_json_float(v) for v in per_class]}


class CrfLabelQuality(_ImageCounts):
    """Scores three-way label maps (class / 0 background / 255 uncertain) against GT.

    One (K + 1) × (K + 2) confusion matrix holds everything: rows are GT
    classes (GT 255 skipped), columns the label values with "uncertain" as the
    last column. From it (`result`):

    - `fg_precision`: of the pixels labelled with a class, the share whose GT
      is that class; `fg_recall`: of the GT foreground pixels, the share
      labelled with their class.
    - `bg_precision` / `bg_recall`: the same for the confident background.
    - `uncertain_fraction`: the share of pixels left at 255.
    - `miou` / `per_class_iou`: IoU over the labelled (certain) pixels only.

    Args:
        num_classes: segmentation classes, background included (K + 1).
    """

    EXTRA_COLUMNS = 1  # "uncertain"

    def add(self, label_map: np.ndarray, gt: np.ndarray) -> None:
        """Count one image: label_map (H, W) uint8 with 255 uncertain, gt (H, W) uint8."""
        label_map, gt = np.asarray(label_map), np.asarray(gt)
        if label_map.shape != gt.shape:
            raise PsaError(
                f"label map is {label_map.shape[1]}x{label_map.shape[0]} but the ground truth is "
                f"{gt.shape[1]}x{gt.shape[0]}; rerun crf_labels for this dataset"
            )
        n = self.num_classes
        keep = gt != IGNORE_INDEX
        pred = label_map[keep].astype(np.int64)
        pred[pred == IGNORE_INDEX] = n  # the "uncertain" column
        pred = as_class_indices(pred, n + 1, "label map")
        truth = as_class_indices(gt[keep], n, "ground truth")
        self.conf += np.bincount(truth * (n + 1) + pred, minlength=n * (n + 1)).reshape(n, n + 1)
        self.num_images += 1

    def result(self) -> dict[str, Any]:
        """The scores as a JSON-ready dict (None where a ratio has no pixels)."""
        conf = self.conf
        certain = conf[:, :-1]
        fg = slice(BACKGROUND_INDEX + 1, None)
        fg_correct = np.diag(certain)[fg].sum()
        bg = BACKGROUND_INDEX
        return {
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "pixels": int(conf.sum()),
            "fg_precision": _ratio(fg_correct, certain[:, fg].sum()),
            "fg_recall": _ratio(fg_correct, conf[fg, :].sum()),
            "bg_precision": _ratio(certain[bg, bg], certain[:, bg].sum()),
            "bg_recall": _ratio(certain[bg, bg], conf[bg, :].sum()),
            "uncertain_fraction": _ratio(conf[:, -1].sum(), conf.sum()),
            **self._iou(certain),
        }


def write_crf_label_report(
    result: dict[str, Any],
    class_names: Sequence[str],
    json_path: str | os.PathLike,
    csv_path: str | os.PathLike,
) -> None:
    """Write a `CrfLabelQuality.result()` as JSON and a two-column CSV (metric, value)."""
    names = _segmentation_class_names(class_names, result["num_classes"])
    write_json(json_path, {**result, "class_names": names})
    keys = ("fg_precision", "fg_recall", "bg_precision", "bg_recall", "uncertain_fraction")
    rows = [[key, _cell(result[key])] for key in keys]
    rows.append(["miou_labelled", _cell(result["miou"])])
    rows += [
        [f"iou_{name}", _cell(value)]
        for name, value in zip(names, result["per_class_iou"], strict=True)
    ]
    _write_csv(csv_path, ["metric", "value"], rows)


def _write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """One CSV file, written atomically: the header, then the rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


# -- masks of the segmentation network (docs/design.md §1.6) ------------------------------


class MaskQuality(_ImageCounts):
    """mIoU of predicted masks against ground truth, summed over images.

    Args:
        num_classes: segmentation classes, background included (K + 1).
    """

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Count one image: pred (H, W) class indices, gt (H, W) with 255 ignored."""
        if np.shape(pred) != np.shape(gt):
            raise PsaError(
                f"mask is {np.shape(pred)[::-1]} but the ground truth is {np.shape(gt)[::-1]} "
                "(width, height); rerun inference for this dataset"
            )
        self.conf += confusion_matrix(pred, gt, self.num_classes)
        self.num_images += 1

    def result(self) -> dict[str, Any]:
        """JSON-ready: num_images, num_classes, miou, per_class_iou."""
        return {
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            **self._iou(self.conf),
        }


def write_mask_report(
    result: dict[str, Any],
    class_names: Sequence[str],
    json_path: str | os.PathLike,
    csv_path: str | os.PathLike,
) -> None:
    """A `MaskQuality.result()` as JSON and a CSV of (class, iou) rows, mIoU first."""
    names = _segmentation_class_names(class_names, result["num_classes"])
    write_json(json_path, {**result, "class_names": names})
    rows = [["mean", _cell(result["miou"])]]
    rows += [[n, _cell(v)] for n, v in zip(names, result["per_class_iou"], strict=True)]
    _write_csv(csv_path, ["class", "iou"], rows)


# -- parameter sweeps and the summary (docs/design.md §1.5) ------------------------------


class SweepConfusion:
    """One confusion matrix per value of a swept parameter (e.g. the walk's alpha).

    Args:
        num_classes: segmentation classes, background included (K + 1).
        values: the swept values; `add(index, ...)` counts into value `index`.
    """

    def __init__(self, num_classes: int, values: Sequence[float]) -> None:
        if num_classes < 2:
            raise PsaError(f"num_classes={num_classes}: need background plus at least one class")
        if not values:
            raise PsaError("a sweep needs at least one value")
        self.num_classes = num_classes
        self.values = [float(v) for v in values]
        self.confs = np.zeros((len(values), num_classes, num_classes), dtype=np.int64)
        self.counts = np.zeros(len(values), dtype=np.int64)

    def add(self, index: int, pred: np.ndarray, gt: np.ndarray) -> None:
        """Count one image's prediction (H, W) against gt (H, W) for value `index`."""
        self.confs[index] += confusion_matrix(pred, gt, self.num_classes)
        self.counts[index] += 1

    def result(self, name: str, values: Sequence[float], published: float) -> dict[str, Any]:
        """JSON-ready: `sweep` (one {name, miou, per_class_iou} per value), best and published."""
        sweep = []
        for value, conf in zip(values, self.confs, strict=True):
            miou, per_class = iou(conf)
            sweep.append(
                {
                    name: float(value),
                    "miou": _json_float(miou),
                    "per_class_iou": [_json_float(v) for v in per_class],
                }
            )
        scored = [row for row in sweep if row["miou"] is not None]
        best = max(scored, key=lambda row: row["miou"]) if scored else None
        chosen = next((row for row in sweep if row[name] == float(published)), None)
        return {
            "num_images": int(self.counts.max()),
            "num_classes": self.num_classes,
            "parameter": name,
            "sweep": sweep,
            "best_value": best[name] if best else None,
            "best_miou": best["miou"] if best else None,
            "published_value": float(published),
            "published_miou": chosen["miou"] if chosen else None,
            "published_per_class_iou": chosen["per_class_iou"] if chosen else None,
        }


def write_sweep_report(
    result: dict[str, Any],
    class_names: Sequence[str],
    json_path: str | os.PathLike,
    csv_path: str | os.PathLike,
) -> None:
    """A `SweepConfusion.result()` as JSON and CSV (one row per value: value, mIoU, IoUs)."""
    names = _segmentation_class_names(class_names, result["num_classes"])
    write_json(json_path, {**result, "class_names": names})
    _write_csv(
        csv_path,
        [result["parameter"], "miou", *names],
        (
            [
                _fmt(row[result["parameter"]]),
                *(_cell(v) for v in (row["miou"], *row["per_class_iou"])),
            ]
            for row in result["sweep"]
        ),
    )


SUMMARY_COLUMNS = ("split", "stage", "setting", "miou", "note")


NO_GROUND_TRUTH = "no ground truth: no image of this split has a mask"
NOT_EVALUATED = "not evaluated: dataset.eval_splits is empty"


def _scored_note(result: dict[str, Any]) -> str:
    """`; scored on N of M images` when only some of a split's images have masks."""
    listed = result.get("listed_images")
    if listed is None or listed == result["num_images"]:
        return ""
    return f"; scored on the {result['num_images']} of {listed} images with a mask"


def _walk_changes_row(split: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The summary row of a `psa walk-changes` report (a split without ground truth)."""
    if changes["kept"] is None:
        note = "the CAMs have no foreground at this threshold"
    else:
        note = (
            f"the walk kept {_pct(changes['kept'])} of the CAM foreground, gave "
            f"{_pct(changes['changed'])} another class, made {_pct(changes['removed'])} "
            f"background; {len(changes['rewritten'])} of {changes['with_cam_foreground']} "
            f"images kept less than {_pct(changes['rewritten_below'])}"
        )
    return {
        "split": split,
        "stage": "random walk vs CAM",
        "setting": f"CAM bg threshold {changes['bg_threshold']}",
        "miou": None,
        "note": note,
    }


def last_epoch_losses(log_csv: str | os.PathLike) -> dict[str, float]:
    """The losses at the end of a training log (`psa_core.training`'s CSV: step, epoch,
    phase, loss, ...): {"train": the mean of the last epoch's train rows, "val": the
    last val row's loss}, each phase only when the log has rows of it."""
    try:
        with open(log_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
        val = [float(r["loss"]) for r in rows if r["phase"] == "val"]
        train = [(int(r["epoch"]), float(r["loss"])) for r in rows if r["phase"] == "train"]
    except (KeyError, TypeError, ValueError) as exc:
        raise PsaError(f"{log_csv}: not a training log ({exc}); rerun the training") from exc
    losses: dict[str, float] = {}
    if train:
        last = train[-1][0]
        losses["train"] = float(np.mean([loss for epoch, loss in train if epoch == last]))
    if val:
        losses["val"] = val[-1]
    return losses


def final_loss(log_csv: str | os.PathLike) -> tuple[str, float]:
    """The final loss of a training log (`last_epoch_losses`): ("val", its loss) when
    the run validated, else ("train", the last epoch's mean)."""
    losses = last_epoch_losses(log_csv)
    for phase in ("val", "train"):
        if phase in losses:
            return phase, losses[phase]
    raise PsaError(f"{log_csv}: the training log has no loss rows; rerun the training")


def loss_and_guess(
    log_csv: str | os.PathLike, train_labels: np.ndarray, val_labels: np.ndarray | None = None
) -> tuple[str, float, float]:
    """(phase, final loss, the constant guess's loss on the same images) of a CAM
    classifier's training log: `final_loss`, and `psa_core.metrics.constant_guess_loss` of
    the frequencies in `train_labels` scored on `val_labels` for a val loss (required
    then), else on `train_labels`."""
    from psa_core.metrics import constant_guess_loss

    phase, loss = final_loss(log_csv)
    if phase == "val" and val_labels is None:
        raise PsaError(
            f"{log_csv}: the classifier was validated; give its validation split's labels "
            "too (--val-labels)"
        )
    guess = constant_guess_loss(train_labels, val_labels if phase == "val" else train_labels)
    return phase, loss, guess


def classifier_check(
    split: str,
    log_csv: str | os.PathLike,
    train_labels: np.ndarray,
    val_labels: np.ndarray | None = None,
) -> tuple[dict[str, Any], bool]:
    """The CAM classifier's summary row and whether it learned next to nothing.

    Its final loss (`final_loss`) against a constant guess of the class frequencies
    of `train_labels` ((N, K) of 0/1), scored on the labels of the images the loss
    is of: `val_labels` for a val loss (required then), else `train_labels`. Above
    `CHANCE_SHARE` of the guess (or not a number) the row says the classifier learned
    next to nothing; for a train loss it says so with a hedge.
    """
    phase, loss, guess = loss_and_guess(log_csv, train_labels, val_labels)
    nothing = not loss <= CHANCE_SHARE * guess
    compared = (
        f"{phase} loss {loss:.3f}; a constant guess of the class frequencies scores {guess:.3f}"
    )
    if nothing and phase == "val":
        note = (
            f"{compared}: the classifier learned next to nothing from the images, so the "
            "CAMs and every later stage carry no position information (README, "
            "troubleshooting)"
        )
    elif nothing:
        note = (
            f"{compared}: the classifier may have learned next to nothing from the images "
            "(a train loss, taken under augmentation, is weaker evidence: give the run a "
            "dataset.val_split; README, troubleshooting)"
        )
    else:
        note = f"{phase} loss {loss:.3f}, {_pct(loss / guess)} of a constant guess of the class frequencies ({guess:.3f})"
    row = {
        "split": split,
        "stage": "CAM classifier",
        "setting": f"final {phase} loss",
        "miou": None,
        "note": note,
    }
    return row, nothing


def summary_rows(
    results: dict[str, dict[str, dict[str, Any]]],
    no_ground_truth: Sequence[str] = (),
    walk_changes: Mapping[str, dict[str, Any]] | None = None,
    classifier: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The CAM → CRF labels → random walk → segmentation network table:
    rows of `SUMMARY_COLUMNS` per split, after the CAM classifier's row (`classifier`,
    from `classifier_check`) when the CAMs were trained.

    Args:
        results: split → {"cam": evaluate_cams result, "crf": CrfLabelQuality
            result, "walk": SweepConfusion result of the walk, and optionally
            "seg": MaskQuality result of the segmentation network}.
        no_ground_truth: splits without any mask: one row each saying so. With
            neither results nor such splits, one row says nothing was evaluated.
        walk_changes: split -> its `psa walk-changes` report, for splits without
            ground truth: a row with what the walk did to the CAM foreground.
    """
    rows = [classifier] if classifier else []
    for split in no_ground_truth:
        rows.append(
            {"split": split, "stage": "all", "setting": "", "miou": None, "note": NO_GROUND_TRUTH}
        )
        if walk_changes and split in walk_changes:
            rows.append(_walk_changes_row(split, walk_changes[split]))
    if not results and not no_ground_truth:
        rows.append(
            {"split": "", "stage": "all", "setting": "", "miou": None, "note": NOT_EVALUATED}
        )
    for split, stages in results.items():
        cam, crf, walk = stages["cam"], stages["crf"], stages["walk"]
        scored = _scored_note(cam)
        rows += [
            {
                "split": split,
                "stage": "CAM",
                "setting": f"bg threshold {cam['published_threshold']}",
                "miou": cam["published_miou"],
                "note": f"published threshold{scored}",
            },
            {
                "split": split,
                "stage": "CAM",
                "setting": f"bg threshold {cam['best_threshold']}",
                "miou": cam["best_miou"],
                "note": f"best threshold of the sweep (chosen on ground truth){scored}",
            },
            {
                "split": split,
                "stage": "CRF labels",
                "setting": "labelled pixels only",
                "miou": crf["miou"],
                "note": f"{_pct(crf['uncertain_fraction'])} of pixels left uncertain{scored}",
            },
            {
                "split": split,
                "stage": "random walk",
                "setting": f"alpha {_fmt(walk['published_value'])}",
                "miou": walk["published_miou"],
                "note": f"configured alpha (the masks written){scored}",
            },
            {
                "split": split,
                "stage": "random walk",
                "setting": f"alpha {_fmt(walk['best_value'])}",
                "miou": walk["best_miou"],
                "note": f"best alpha of the sweep (chosen on ground truth){scored}",
            },
        ]
        if "seg" in stages:
            rows.append(
                {
                    "split": split,
                    "stage": "segmentation network",
                    "setting": "trained on the random-walk masks",
                    "miou": stages["seg"]["miou"],
                    "note": f"no image-level labels at inference{scored}",
                }
            )
    return rows


def write_summary(
    rows: Sequence[dict[str, Any]], json_path: str | os.PathLike, csv_path: str | os.PathLike
) -> None:
    """The summary rows as JSON (a list) and CSV (`SUMMARY_COLUMNS`)."""
    write_json(json_path, list(rows))
    _write_csv(
        csv_path,
        SUMMARY_COLUMNS,
        ([_cell(row[c]) if c == "miou" else row[c] for c in SUMMARY_COLUMNS] for row in rows),
    )
