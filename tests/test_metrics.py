"""psa_core.metrics: confusion matrix and IoU against hand-computed values."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from psa_core.errors import PsaError
from psa_core.metrics import confusion_matrix, constant_guess_loss, iou, walk_changes

# 4 classes; class 2 appears in neither gt nor prediction; 255 pixels ignored.
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 3, 1, 255],
        [255, 3, 3, 0],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 3, 0, 3],  # the last one is under a 255 gt: ignored
        [1, 3, 0, 0],
    ],
    dtype=np.uint8,
)
# rows gt, cols pred, counted by hand:
# gt 0 at (0,0)->0 (0,1)->1 (1,0)->0 (2,3)->0      => [3, 1, 0, 0]
# gt 1 at (0,2)->1 (0,3)->1 (1,2)->0               => [1, 2, 0, 0]
# gt 3 at (1,1)->3 (2,1)->3 (2,2)->0               => [1, 0, 0, 2]
EXPECTED = np.array(
    [
        [3, 1, 0, 0],
        [1, 2, 0, 0],
        [0, 0, 0, 0],
        [1, 0, 0, 2],
    ],
    dtype=np.int64,
)


def test_confusion_matrix_hand_computed():
    conf = confusion_matrix(PRED, GT, num_classes=4)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, EXPECTED)
    assert conf.sum() == np.count_nonzero(GT != 255)


def test_confusion_matrix_orientation_rows_are_gt():
    conf = confusion_matrix(np.array([1]), np.array([0]), num_classes=2)
    np.testing.assert_array_equal(conf, [[0, 1], [0, 0]])


def test_confusion_matrix_without_ignore_rejects_255():
    with pytest.raises(PsaError, match="ground truth holds class index 255"):
        confusion_matrix(PRED, GT, num_classes=4, ignore_index=None)


def test_confusion_matrix_shape_mismatch_names_both_shapes():
    with pytest.raises(PsaError, match=r"\(3, 4\).*\(4, 3\)"):
        confusion_matrix(PRED, GT.T, num_classes=4)


def test_confusion_matrix_rejects_out_of_range_prediction():
    pred = PRED.copy()
    pred[0, 0] = 4
    with pytest.raises(PsaError, match="prediction holds class index 4"):
        confusion_matrix(pred, GT, num_classes=4)
    with pytest.raises(PsaError, match="-1"):
        confusion_matrix(np.full(GT.shape, -1), GT, num_classes=4)


def test_confusion_matrix_sums_over_images():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 5, (3, 7, 9))
    gts = rng.integers(0, 5, (3, 7, 9))
    gts[:, 0] = 255
    total = sum(confusion_matrix(p, g, 5) for p, g in zip(preds, gts, strict=True))
    np.testing.assert_array_equal(total, confusion_matrix(preds, gts, 5))
    brute = np.zeros((5, 5), np.int64)
    for p, g in zip(preds.ravel(), gts.ravel(), strict=True):
        if g != 255:
            brute[g, p] += 1
    np.testing.assert_array_equal(total, brute)


def test_iou_hand_computed_with_absent_class():
    miou, per_class = iou(EXPECTED)
    # class 0: TP 3, FP 1+1 (gt 1 and gt 3 predicted 0), FN 1      -> 3/6
    # class 1: TP 2, FP 1, FN 1                                     -> 2/4
    # class 2: TP + FP + FN = 0                                     -> NaN, not averaged
    # class 3: TP 2, FP 0, FN 1                                     -> 2/3
    np.testing.assert_allclose(per_class[[0, 1, 3]], [0.5, 0.5, 2 / 3])
    assert math.isnan(per_class[2])
    assert isinstance(miou, float)
    assert miou == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)


def test_iou_class_only_predicted_counts_as_zero():
    conf = np.array([[1, 1], [0, 0]])  # class 1 predicted once, never in gt
    miou, per_class = iou(conf)
    np.testing.assert_allclose(per_class, [0.5, 0.0])
    assert miou == pytest.approx(0.25)


def test_iou_empty_matrix_is_nan():
    miou, per_class = iou(np.zeros((3, 3), np.int64))
    assert math.isnan(miou)
    assert np.isnan(per_class).all()


def test_iou_rejects_non_square():
    with pytest.raises(PsaError, match="square"):
        iou(np.zeros((2, 3)))


def test_walk_changes_counts_by_hand() -> None:
    """A 2x3 image, two classes (ids 0 and 2 -> indices 1 and 3), threshold 0.5."""
    cams = np.array(
        [
            [[0.9, 0.8, 0.1], [0.6, 0.2, 0.0]],  # class id 0
            [[0.1, 0.9, 0.2], [0.7, 0.3, 0.4]],  # class id 2
        ],
        dtype=np.float32,
    )
    # CAM labels: [[1, 3, 0], [3, 0, 0]]  (0.8 < 0.9 at (0, 1); (1, 1) best 0.3 < 0.5)
    walk = np.array([[1, 1, 0], [0, 3, 0]], dtype=np.uint8)
    assert walk_changes(cams, np.array([0, 2]), walk, 0.5) == {
        "cam_foreground": 3,
        "kept": 1,  # (0, 0)
        "changed": 1,  # (0, 1): 3 -> 1
        "removed": 1,  # (1, 0): 3 -> background
        "added": 1,  # (1, 1)
    }
    with pytest.raises(PsaError, match="rerun the random walk"):
        walk_changes(cams, np.array([0, 2]), walk[:, :2], 0.5)


# -- constant_guess_loss -------------------------------------------------------------


def _soft_margin(logits: np.ndarray, labels: np.ndarray) -> float:
    """torch's multi-label soft margin loss (the CAM loss) of these logits."""
    import torch
    import torch.nn.functional as F

    return float(F.multilabel_soft_margin_loss(torch.from_numpy(logits), torch.from_numpy(labels)))


def test_constant_guess_loss_by_hand() -> None:
    """Class 0 on 1 of 4 images, class 1 on 2 of 4: the mean binary entropy, in nats."""
    labels = np.array([[1, 0], [0, 1], [0, 1], [0, 0]], dtype=np.float32)
    entropy = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    expected = (entropy(0.25) + entropy(0.5)) / 2
    assert constant_guess_loss(labels, labels) == pytest.approx(expected, rel=1e-12)


def test_constant_guess_loss_is_torch_soft_margin_of_the_frequency_logits_and_its_minimum():
    rng = np.random.default_rng(0)
    train = (rng.random((40, 5)) < [0.1, 0.3, 0.5, 0.7, 0.2]).astype(np.float32)
    val = (rng.random((15, 5)) < 0.4).astype(np.float32)
    p = train.mean(axis=0)
    logits = np.log(p / (1 - p)).astype(np.float32)
    for scored in (train, val):
        brute = _soft_margin(np.tile(logits, (len(scored), 1)), scored)
        assert constant_guess_loss(train, scored) == pytest.approx(brute, rel=1e-5)
    # on the training labels no other constant does better, class by class
    best = constant_guess_loss(train, train)
    for k in range(train.shape[1]):
        for shift in (-0.3, -0.05, 0.05, 0.3):
            moved = logits.copy()
            moved[k] += shift
            assert _soft_margin(np.tile(moved, (len(train), 1)), train) > best


def test_constant_guess_loss_is_finite_for_a_class_on_every_image_or_none() -> None:
    train = np.array([[1, 0], [1, 0]], dtype=np.float32)  # p clipped to 3/4 and 1/4
    expected = -math.log(0.75)
    assert constant_guess_loss(train, train) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(constant_guess_loss(train, 1 - train))


@pytest.mark.parametrize(
    ("train", "scored", "message"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "same classes"),
        (np.zeros(3), np.zeros((3, 1)), "(images, classes)"),
        (np.zeros((0, 2)), np.zeros((3, 2)), "no labelled images"),
    ],
)
def test_constant_guess_loss_refuses_bad_shapes(train, scored, message: str) -> None:
    with pytest.raises(PsaError, match=re.escape(message)):
        constant_guess_loss(train, scored)
