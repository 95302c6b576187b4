"""Segmentation metrics: the confusion matrix and IoU (docs/design.md §1.5).

Every evaluation in the pipeline (CAMs, CRF labels, random-walk masks)
accumulates `confusion_matrix` over images and reads `iou` off the sum.
"""

from __future__ import annotations

import numpy as np

from psa_core.constants import BACKGROUND_INDEX, IGNORE_INDEX
from psa_core.errors import PsaError


def confusion_matrix(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """Pixel confusion matrix of one prediction against its ground truth.

    Rows are ground-truth classes, columns predicted classes:
    `conf[g, p]` counts the pixels with gt == g and pred == p. Pixels whose
    gt is `ignore_index` are skipped whatever their prediction.

    Args:
        pred: (H, W) (or any shape) integer class indices.
        gt: same shape, integer class indices or `ignore_index`.
        num_classes: number of classes, background included (K + 1).
        ignore_index: gt value to skip (255); None skips nothing.

    Returns:
        (num_classes, num_classes) int64.

    Raises:
        PsaError: shapes differ, or a counted pixel of `pred` or `gt` is not
            in [0, num_classes).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise PsaError(
            f"prediction has shape {pred.shape} but ground truth has shape {gt.shape}; "
            "they must match (is the mask for a different image or resized?)"
        )
    if num_classes < 1:
        raise PsaError(f"num_classes={num_classes}: must be at least 1")
    if ignore_index is not None:
        keep = gt != ignore_index
        pred = pred[keep]
        gt = gt[keep]
    pred = as_class_indices(pred, num_classes, "prediction")
    gt = as_class_indices(gt, num_classes, "ground truth")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def iou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Per-class IoU and its mean from a confusion matrix (rows gt, cols pred).

    IoU_c = TP / (TP + FP + FN). A class with TP + FP + FN = 0 (absent from
    both the ground truth and the prediction) has no defined IoU: it gets NaN
    and is left out of the mean (`nanmean`, as chainercv / IRN evaluate).
    Where every class is NaN (nothing counted) the mean is NaN.

    Args:
        conf: (N, N) counts, rows = ground truth, columns = prediction.

    Returns:
        (miou, per_class): a Python float and an (N,) float64 array.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise PsaError(f"confusion matrix has shape {conf.shape}; expected square (N, N)")
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    per_class = np.full(tp.shape, np.nan)
    np.divide(tp, union, out=per_class, where=union > 0)
    defined = per_class[~np.isnan(per_class)]
    miou = float(defined.mean()) if defined.size else float("nan")
    return miou, per_class


def as_class_indices(values: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    """Flatten integer class indices to int64, checking each is in [0, num_classes).

    `what` names the array in the PsaError ("prediction", "ground truth").
    """
    if values.dtype.kind not in "iub":
        raise PsaError(f"{what} has dtype {values.dtype}; expected integer class indices")
    values = values.astype(np.int64, copy=False).ravel()
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)]
        raise PsaError(
            f"{what} holds class index {int(bad[0])}, outside [0, {num_classes}); "
            "check num_classes and the ignore index"
        )
    return values


def top_class(cams: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best class per pixel, before the background decision.

    Args:
        cams: (C, H, W) float maps of the present classes (C may be 0).
        class_ids: (C,) 0-based class ids of the maps.

    Returns:
        (score, index): (H, W) float32 max over the maps (-inf where C = 0)
        and (H, W) uint8 segmentation index (class id + 1) of the first
        maximising map (BACKGROUND_INDEX where C = 0).
    """
    cams = np.asarray(cams)
    class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    if cams.ndim != 3:
        raise PsaError(f"CAMs have shape {cams.shape}; expected (C, H, W)")
    if class_ids.shape[0] != cams.shape[0]:
        raise PsaError(
            f"CAMs have {cams.shape[0]} maps but {class_ids.shape[0]} class ids; they must match"
        )
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() + 1 >= IGNORE_INDEX):
        raise PsaError(
            f"class ids {class_ids.tolist()}: each must be in [0, {IGNORE_INDEX - 1}) (0-based)"
        )
    height, width = cams.shape[1:]
    if cams.shape[0] == 0:
        return (
            np.full((height, width), -np.inf, dtype=np.float32),
            np.full((height, width), BACKGROUND_INDEX, dtype=np.uint8),
        )
    cams = cams.astype(np.float32, copy=False)
    best = cams.argmax(axis=0)
    score = np.take_along_axis(cams, best[None], axis=0)[0]
    lut = (class_ids + 1).astype(np.uint8)
    return score, lut[best]


WALK_CHANGES = ("kept", "changed", "removed")
"""What the random walk did to a CAM-foreground pixel: kept its class, gave it another
class, or made it background (`walk_changes`)."""


def walk_changes(
    cams: np.ndarray, class_ids: np.ndarray, walk_mask: np.ndarray, bg_threshold: float
) -> dict[str, int]:
    """How the random walk's mask treats the CAM's foreground, without ground truth.

    The CAM's label map at `bg_threshold` (a pixel is its best class where that
    class's score exceeds the threshold, else background, as in the CAM
    evaluation) against the walk's mask of the same size.

    Returns:
        Pixel counts: `cam_foreground`, and of those `kept` (same class),
        `changed` (another class) and `removed` (background); `added`, the
        walk's foreground where the CAM had background.
    """
    score, index = top_class(cams, class_ids)
    walk_mask = np.asarray(walk_mask)
    if walk_mask.shape != score.shape:
        raise PsaError(
            f"the walk's mask is {walk_mask.shape} but the CAMs are {score.shape}; both come "
            "from the same image at its working size: rerun the random walk"
        )
    cam = np.where(score > bg_threshold, index, BACKGROUND_INDEX)
    foreground = cam != BACKGROUND_INDEX
    walk_foreground = walk_mask != BACKGROUND_INDEX
    return {
        "cam_foreground": int(foreground.sum()),
        "kept": int((foreground & (walk_mask == cam)).sum()),
        "changed": int((foreground & walk_foreground & (walk_mask != cam)).sum()),
        "removed": int((foreground & ~walk_foreground).sum()),
        "added": int((~foreground & walk_foreground).sum()),
    }


def constant_guess_loss(train_labels: np.ndarray, labels: np.ndarray) -> float:
    """The CAM loss (multi-label soft margin) of the best classifier that ignores the image.

    Every image gets the logits log(p / (1 - p)) of the classes' frequencies p in
    `train_labels` ((N, K) of 0/1), and the loss is taken on `labels` ((M, K) of 0/1):
    on the training labels themselves, the mean binary entropy of the frequencies in
    nats. A classifier whose loss stays near it has learned nothing from the pixels.
    The frequencies are clipped to [1 / 2N, 1 - 1 / 2N], so that a class on every
    training image, or on none, costs a finite loss.
    """
    train_labels = np.asarray(train_labels, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if train_labels.ndim != 2 or labels.ndim != 2 or train_labels.shape[1] != labels.shape[1]:
        raise PsaError(
            f"label matrices {train_labels.shape} and {labels.shape}: both must be "
            "(images, classes) with the same classes"
        )
    if not len(train_labels) or not len(labels):
        raise PsaError("no labelled images: the constant guess needs at least one of each")
    floor = 1 / (2 * len(train_labels))
    p = np.clip(train_labels.mean(axis=0), floor, 1 - floor)
    return float(-(labels * np.log(p) + (1 - labels) * np.log1p(-p)).mean())
