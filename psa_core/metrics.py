"""Segmentation metrics: the confusion matrix and IoU (docs/design.md §1.5).

Every evaluation in the pipeline (CAMs, CRF labels, random-walk masks)
accumulates `confusion_matrix` over images and reads `iou` off the sum.
"""

from __future__ import annotations

import numpy as np

from psa_core.constants import IGNORE_INDEX
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
