"""psa_core.crf: real pydensecrf on the synthetic dataset, hand-computed score stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
import torch.nn.functional as F
from pydensecrf.utils import unary_from_softmax

from psa_core.constants import BACKGROUND_INDEX, FEATURE_STRIDE, IGNORE_INDEX
from psa_core.crf import (
    ALPHA_HIGH,
    ALPHA_LOW,
    background_score,
    crf_inference,
    crf_score_stacks,
    score_stack,
)
from psa_core.data import gt_mask_path, image_path, read_image_list
from psa_core.data.synthetic import generate
from psa_core.errors import PsaError
from psa_core.io import read_image, read_mask

NUM_TRAIN = 4
CAM_BLUR_CELLS = 3  # a CAM cell sees its 3x3 neighbourhood on the stride-8 grid
MIN_CRF_GAIN = 0.03  # measured gain: 0.047 (alpha 4) and 0.082 (alpha 32)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image (H, W, 3) uint8, GT (H, W) uint8) of every synthetic train image."""
    root: Path = tmp_path_factory.mktemp("synthetic")
    generate(root, num_train=NUM_TRAIN, num_val=1, image_size=(64, 96), num_classes=3, seed=0)
    return [
        (read_image(image_path(root, name)), read_mask(gt_mask_path(root, name)))
        for name in read_image_list(root, "train")
    ]


def present_classes(gt: np.ndarray) -> list[int]:
    """Segmentation indices of the foreground classes in a GT mask."""
    return [int(c) for c in np.unique(gt) if c not in (BACKGROUND_INDEX, IGNORE_INDEX)]


def coarse_cams(gt: np.ndarray, classes: list[int]) -> np.ndarray:
    """CAM-like maps from GT: 8x8 average pool, 3x3-cell box blur, bilinear up, max-normalised.

    Returns (C, H, W) float32 in [0, 1), one map per index of `classes`.
    """
    height, width = gt.shape
    masks = torch.from_numpy(np.stack([gt == c for c in classes]).astype(np.float32))[None]
    pad_h, pad_w = -height % FEATURE_STRIDE, -width % FEATURE_STRIDE
    cells = F.avg_pool2d(F.pad(masks, (0, pad_w, 0, pad_h)), FEATURE_STRIDE)
    cells = F.avg_pool2d(
        cells, CAM_BLUR_CELLS, stride=1, padding=CAM_BLUR_CELLS // 2, count_include_pad=False
    )
    up = F.interpolate(
        cells, size=(height + pad_h, width + pad_w), mode="bilinear", align_corners=False
    )
    cams = up[0, :, :height, :width].numpy()
    return cams / (cams.max(axis=(1, 2), keepdims=True) + 1e-5)


def agreement(stack: np.ndarray, gt: np.ndarray, classes: list[int]) -> tuple[int, int]:
    """(pixels where argmax of `stack` equals GT, pixels with GT != 255)."""
    to_index = np.array([BACKGROUND_INDEX, *classes])
    valid = gt != IGNORE_INDEX
    return int((to_index[stack.argmax(axis=0)] == gt)[valid].sum()), int(valid.sum())


# -- crf_inference ----------------------------------------------------------


def test_marginals_are_distributions(samples):
    image, gt = samples[0]
    classes = present_classes(gt)
    marginals = crf_inference(image, score_stack(coarse_cams(gt, classes), ALPHA_LOW))
    assert marginals.shape == (len(classes) + 1, *gt.shape)
    assert marginals.dtype == np.float32
    assert marginals.min() >= 0 and marginals.max() <= 1
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0, atol=1e-4)


def test_matches_published_pydensecrf_call(samples):
    """Same result as PSA's imutils.crf_inference (unary_from_softmax, np.copy(img))."""
    image, _ = samples[1]
    height, width = image.shape[:2]
    probs = np.random.default_rng(0).random((3, height, width))
    reference = dcrf.DenseCRF2D(width, height, 3)
    reference.setUnaryEnergy(unary_from_softmax(probs))
    reference.addPairwiseGaussian(sxy=3, compat=3)
    reference.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(image), compat=10)
    expected = np.array(reference.inference(10)).reshape(3, height, width)
    np.testing.assert_allclose(crf_inference(image, probs), expected, atol=1e-6)


@pytest.mark.parametrize("alpha", [ALPHA_LOW, ALPHA_HIGH])
def test_crf_sharpens_coarse_cams(samples, alpha):
    """On easy images the CRF snaps blurred stride-8 CAMs to the object edges."""
    raw_hits = crf_hits = total = 0
    for image, gt in samples:
        classes = present_classes(gt)
        stack = score_stack(coarse_cams(gt, classes), alpha)
        raw, valid = agreement(stack, gt, classes)
        refined, _ = agreement(crf_inference(image, stack), gt, classes)
        assert refined > raw
        raw_hits, crf_hits, total = raw_hits + raw, crf_hits + refined, total + valid
    assert crf_hits / total >= raw_hits / total + MIN_CRF_GAIN


def test_size_mismatch_names_both_sizes(samples):
    image, _ = samples[0]
    height, width = image.shape[:2]
    probs = np.full((2, height + 1, width), 0.5, dtype=np.float32)
    with pytest.raises(PsaError, match=f"{height + 1}x{width} but the image is {height}x{width}"):
        crf_inference(image, probs)


def test_rejects_float_image():
    probs = np.full((2, 4, 5), 0.5, dtype=np.float32)
    with pytest.raises(PsaError, match="uint8"):
        crf_inference(np.zeros((4, 5, 3), dtype=np.float32), probs)


def test_rejects_grey_image():
    probs = np.full((2, 4, 5), 0.5, dtype=np.float32)
    with pytest.raises(PsaError, match=r"\(H, W, 3\)"):
        crf_inference(np.zeros((4, 5), dtype=np.uint8), probs)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_non_finite_scores(bad):
    probs = np.full((2, 4, 5), 0.5, dtype=np.float32)
    probs[1, 2, 3] = bad
    with pytest.raises(PsaError, match="NaN or infinity"):
        crf_inference(np.zeros((4, 5, 3), dtype=np.uint8), probs)


def test_rejects_negative_scores_and_bad_shapes():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    with pytest.raises(PsaError, match="negative"):
        crf_inference(image, np.full((2, 4, 5), -0.1))
    with pytest.raises(PsaError, match=r"\(C, H, W\)"):
        crf_inference(image, np.full((4, 5), 0.5))
    with pytest.raises(PsaError, match="C = 0"):
        crf_inference(image, np.zeros((0, 4, 5)))
    with pytest.raises(PsaError, match="iterations"):
        crf_inference(image, np.full((2, 4, 5), 0.5), iterations=0)


# -- background_score / score_stack -----------------------------------------


CAMS_2X2 = np.array(
    [
        [[0.0, 0.5], [1.0, 0.2]],
        [[0.25, 0.1], [0.0, 0.6]],
    ],
    dtype=np.float32,
)


def test_background_score_by_hand():
    # max over classes: [[0.25, 0.5], [1.0, 0.6]] -> 1 - max: [[0.75, 0.5], [0.0, 0.4]]
    expected = np.array([[[0.75**2, 0.25], [0.0, 0.16]]], dtype=np.float32)
    result = background_score(CAMS_2X2, 2)
    assert result.shape == (1, 2, 2) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_score_stack_by_hand():
    stack = score_stack(CAMS_2X2, 1)
    assert stack.shape == (3, 2, 2) and stack.dtype == np.float32
    np.testing.assert_allclose(stack[0], [[0.75, 0.5], [0.0, 0.4]], rtol=1e-6)
    np.testing.assert_array_equal(stack[1:], CAMS_2X2)


def test_no_present_class_is_all_background():
    cams = np.zeros((0, 2, 3), dtype=np.float32)
    np.testing.assert_array_equal(background_score(cams, ALPHA_LOW), np.ones((1, 2, 3)))
    assert score_stack(cams, ALPHA_HIGH).shape == (1, 2, 3)


def test_background_rejects_cams_outside_unit_interval():
    with pytest.raises(PsaError, match=r"\[0, 1\]"):
        background_score(CAMS_2X2 * 2, ALPHA_LOW)


# -- crf_score_stacks -------------------------------------------------------


def test_score_stacks_shapes_and_background_order(samples):
    image, gt = samples[2]
    classes = present_classes(gt)
    cams = coarse_cams(gt, classes)
    assert np.all(score_stack(cams, ALPHA_HIGH)[0] <= score_stack(cams, ALPHA_LOW)[0])
    la, ha = crf_score_stacks(image, cams)
    for stack in (la, ha):
        assert stack.shape == (len(classes) + 1, *gt.shape)
        assert stack.dtype == np.float32
        np.testing.assert_allclose(stack.sum(axis=0), 1.0, atol=1e-4)
    # the tight background of "ha" leaves at most the background of "la"
    assert (ha.argmax(axis=0) == 0).sum() <= (la.argmax(axis=0) == 0).sum()


def test_score_stacks_without_classes(samples):
    image, _ = samples[0]
    la, ha = crf_score_stacks(image, np.zeros((0, *image.shape[:2]), dtype=np.float32))
    np.testing.assert_allclose(la, 1.0)
    np.testing.assert_allclose(ha, 1.0)


def test_score_stacks_reject_swapped_alphas(samples):
    image, gt = samples[0]
    cams = coarse_cams(gt, present_classes(gt))
    with pytest.raises(PsaError, match="swap them"):
        crf_score_stacks(image, cams, alpha_low=ALPHA_HIGH, alpha_high=ALPHA_LOW)
