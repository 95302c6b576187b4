"""psa_core.cam: multi-scale CAM fusion against a one-view-at-a-time oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from psa_core.cam import cams_to_segmentation, multiscale_cam
from psa_core.errors import PsaError
from psa_core.transforms import IMAGENET_NORMALIZATION

NUM_CLASSES = 5
SCALES = (1.0, 0.5, 1.5, 2.0)


class TinyCamModel(nn.Module):
    """Three stride-2 convs (stride 8) and a bias-free 1x1 class conv; the CAM contract."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.normalization = IMAGENET_NORMALIZATION
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(16, num_classes, 1, bias=False)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.classifier(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def model() -> TinyCamModel:
    torch.manual_seed(0)
    net = TinyCamModel().eval()
    with torch.no_grad():  # every class map has positive parts somewhere
        net.classifier.weight.abs_()
    return net


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (height + width)], -1)
    return np.clip(smooth + rng.normal(0, 30, smooth.shape), 0, 255).astype(np.uint8)


def brute_force_cam(model, image, label, scales=SCALES) -> np.ndarray:
    """The published loop: one forward per view (batch 1), mask and flip back per view."""
    height, width = image.shape[:2]
    total = np.zeros((len(label), height, width), dtype=np.float64)
    for scale in scales:
        size = (round(width * scale), round(height * scale))
        scaled = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        for flip in (False, True):
            view = scaled[:, ::-1] if flip else scaled
            x = torch.from_numpy(model.normalization.numpy(view))[None]
            with torch.no_grad():
                cam = model.cam(x)
                cam = F.interpolate(cam, (height, width), mode="bilinear", align_corners=False)
            cam = cam[0].numpy()
            if flip:
                cam = cam[:, :, ::-1]
            total += cam * np.asarray(label, dtype=np.float64)[:, None, None]
    return total / (total.max(axis=(1, 2), keepdims=True) + 1e-5)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (40, 32)])
def test_multiscale_cam_matches_one_view_at_a_time(model, height, width):
    image = make_image(height, width)
    label = np.array([1, 0, 1, 0, 1], dtype=np.float32)
    cams = multiscale_cam(model, image, label)
    expected = brute_force_cam(model, image, label)

    assert cams.shape == (NUM_CLASSES, height, width)
    assert cams.dtype == np.float32
    np.testing.assert_allclose(cams, expected, rtol=0, atol=1e-5)
    assert np.all(cams[[1, 3]] == 0)  # absent classes exactly zero
    np.testing.assert_allclose(cams[[0, 2, 4]].max(axis=(1, 2)), 1.0, atol=1e-4)
    assert cams.min() >= 0 and cams.max() <= 1


def test_multiscale_cam_custom_scales_and_bool_label(model):
    image = make_image(29, 31, seed=1)
    label = np.array([False, True, False, False, False])
    cams = multiscale_cam(model, image, label, scales=(1.0, 0.75))
    expected = brute_force_cam(model, image, label.astype(np.float32), scales=(1.0, 0.75))
    np.testing.assert_allclose(cams, expected, rtol=0, atol=1e-5)


def test_multiscale_cam_all_absent_is_zero(model):
    cams = multiscale_cam(model, make_image(21, 17), np.zeros(NUM_CLASSES))
    assert cams.shape == (NUM_CLASSES, 21, 17)
    assert cams.dtype == np.float32
    assert not cams.any()


def test_multiscale_cam_autocast_bfloat16_close(model):
    image = make_image(33, 41, seed=2)
    label = np.array([1, 1, 0, 0, 0])
    cams = multiscale_cam(model, image, label, amp_dtype=torch.bfloat16)
    assert cams.dtype == np.float32
    np.testing.assert_allclose(cams, multiscale_cam(model, image, label), atol=0.05)


def test_multiscale_cam_rejects_bad_inputs(model):
    image = make_image(16, 16)
    with pytest.raises(PsaError, match="num_classes=3"):
        multiscale_cam(model, image, np.array([1, 0, 0]))
    with pytest.raises(PsaError, match="0 or 1"):
        multiscale_cam(model, image, np.array([0.5, 0, 0, 0, 0]))
    with pytest.raises(PsaError, match="uint8"):
        multiscale_cam(model, image.astype(np.float32), np.ones(NUM_CLASSES))
    with pytest.raises(PsaError, match="scale"):
        multiscale_cam(model, image, np.ones(NUM_CLASSES), scales=(1.0, -0.5))


def test_cams_to_segmentation_hand_made():
    cams = np.array(
        [
            [[0.1, 0.5, 0.3], [0.2, 0.0, 0.9]],  # class 3
            [[0.15, 0.6, 0.3], [0.1, 0.25, 0.9]],  # class 7
        ],
        dtype=np.float32,
    )
    seg = cams_to_segmentation(cams, np.array([3, 7]), bg_threshold=0.2)
    # (0,0): nothing above 0.2 -> bg; (0,2): class tie -> first map; (1,0): 0.2 ties bg -> bg.
    expected = np.array([[0, 8, 4], [0, 8, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(seg, expected)
    assert seg.dtype == np.uint8

    seg = cams_to_segmentation(cams, np.array([3, 7]), bg_threshold=0.55)
    np.testing.assert_array_equal(seg, [[0, 8, 0], [0, 0, 4]])


def test_cams_to_segmentation_no_classes_is_background():
    seg = cams_to_segmentation(np.zeros((0, 4, 6), np.float32), np.zeros(0, np.int64), 0.2)
    assert seg.shape == (4, 6) and seg.dtype == np.uint8
    assert not seg.any()


def test_cams_to_segmentation_matches_stacked_argmax():
    rng = np.random.default_rng(3)
    cams = rng.random((3, 20, 30)).astype(np.float32)
    class_ids = np.array([0, 11, 19])
    for threshold in (0.0, 0.2, 0.5, 1.0):
        stack = np.concatenate([np.full((1, 20, 30), threshold, np.float32), cams])
        expected = np.concatenate([[0], class_ids + 1])[stack.argmax(axis=0)]
        np.testing.assert_array_equal(cams_to_segmentation(cams, class_ids, threshold), expected)


def test_cams_to_segmentation_rejects_mismatched_ids():
    with pytest.raises(PsaError, match="2 maps but 1 class ids"):
        cams_to_segmentation(np.zeros((2, 3, 3)), np.array([0]), 0.2)
