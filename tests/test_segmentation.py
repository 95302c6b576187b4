"""The segmentation network's loss, multi-scale fusion, overlay and model folder (docs/design.md §1.6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from psa_core import io
from psa_core.constants import IGNORE_INDEX, voc_palette
from psa_core.errors import PsaError
from psa_core.evaluate import MaskQuality, summary_rows
from psa_core.models import build_model
from psa_core.segmentation import (
    MODEL_FILE,
    WEIGHTS_FILE,
    load_model_folder,
    multiscale_softmax,
    overlay,
    pixel_cross_entropy,
    probs_to_mask,
    size_batches,
    write_model_description,
)
from psa_core.settings import SegmentationInferSettings
from psa_core.transforms import SegTrainTransform

NUM_CLASSES = 3  # foreground; the network has 4 outputs


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model("tiny", "seg", num_classes=NUM_CLASSES, dilation=2).eval()
    with torch.no_grad():  # a non-trivial head: random logits of a visible spread
        net.head.seg8.weight.normal_(std=2.0)
    return net


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- loss --------------------------------------------------------------------------


def test_pixel_cross_entropy_by_hand_with_ignored_pixels() -> None:
    logits = torch.tensor(
        [[[[2.0, 0.0], [1.0, -1.0]], [[0.0, 1.0], [1.0, 3.0]], [[-1.0, 0.5], [0.0, 0.0]]]]
    )  # (1, 3, 2, 2)
    target = torch.tensor([[[0, 255], [2, 1]]])
    expected = 0.0
    for (row, col), label in {(0, 0): 0, (1, 0): 2, (1, 1): 1}.items():
        scores = [float(logits[0, c, row, col]) for c in range(3)]
        log_z = math.log(sum(math.exp(s) for s in scores))
        expected += log_z - scores[label]
    expected /= 3  # three labelled pixels; the 255 one counts nowhere
    loss = pixel_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    same = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(same.item(), rel=1e-6)


def test_pixel_cross_entropy_all_ignored_is_zero_with_a_gradient() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = pixel_cross_entropy(logits, torch.full((2, 3, 3), IGNORE_INDEX))
    assert loss.item() == 0.0  # not NaN, as F.cross_entropy's mean would be
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# -- multi-scale fusion ----------------------------------------------------------------


def brute_force_softmax(model, image, scales, flip) -> np.ndarray:
    """One view at a time: resize, (mirror), logits, upsample, softmax, (unmirror), average."""
    height, width = image.shape[:2]
    views = []
    for scale in scales:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        scaled = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
        for mirrored in (False, True) if flip else (False,):
            view = scaled[:, ::-1] if mirrored else scaled
            x = torch.from_numpy(view.transpose(2, 0, 1).astype(np.float32))[None]
            with torch.no_grad():
                logits = model.logits(model.normalization(x))
            up = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = up.softmax(dim=1)[0].numpy()
            views.append(probs[:, :, ::-1] if mirrored else probs)
    return np.mean(views, axis=0)


@pytest.mark.parametrize(
    ("scales", "flip"), [((1.0,), False), ((0.5, 1.0, 1.5), True), ((0.75, 1.25), False)]
)
def test_multiscale_softmax_matches_a_loop_over_views(model, scales, flip) -> None:
    image = _image(37, 45)
    fused = multiscale_softmax(model, [image], scales, flip=flip)
    assert fused.shape == (1, NUM_CLASSES + 1, 37, 45) and fused.dtype == np.float32
    expected = brute_force_softmax(model, image, scales, flip)
    np.testing.assert_allclose(fused[0], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0, atol=1e-5)
    # not mirror-symmetric, so a view flipped the wrong way would show
    assert np.abs(expected - expected[:, :, ::-1]).max() > 1e-2


def test_multiscale_softmax_batches_equal_single_images(model) -> None:
    images = [_image(30, 41, seed) for seed in range(3)]
    batched = multiscale_softmax(model, images, (0.5, 1.0), flip=True)
    for image, probs in zip(images, batched, strict=True):
        single = multiscale_softmax(model, [image], (0.5, 1.0), flip=True)[0]
        np.testing.assert_allclose(probs, single, rtol=1e-4, atol=1e-6)


def test_multiscale_softmax_rejects_mixed_sizes_and_bad_scales(model) -> None:
    with pytest.raises(PsaError, match="one size"):
        multiscale_softmax(model, [_image(20, 20), _image(20, 24)])
    with pytest.raises(PsaError, match="scales"):
        multiscale_softmax(model, [_image(20, 20)], (0.0,))


def test_size_batches_groups_runs_of_one_size() -> None:
    images = [np.zeros(s) for s in [(4, 4, 3), (4, 4, 3), (4, 4, 3), (5, 4, 3), (4, 4, 3)]]
    assert list(size_batches(images, 2)) == [[0, 1], [2], [3], [4]]
    assert list(size_batches(images, 8)) == [[0, 1, 2], [3], [4]]
    with pytest.raises(PsaError, match="batch size 0"):
        list(size_batches(images, 0))


def test_probs_to_mask_takes_the_argmax() -> None:
    probs = np.array([[[0.6, 0.2]], [[0.3, 0.2]], [[0.1, 0.6]]], dtype=np.float32)
    assert probs_to_mask(probs).tolist() == [[0, 2]]


def test_overlay_blends_classes_and_keeps_background() -> None:
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1, 255], [2, 0, 1]], dtype=np.uint8)
    out = overlay(image, mask, alpha=0.5)
    palette = np.asarray(voc_palette()).reshape(256, 3)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[0, 0].tolist() == [100, 100, 100]  # background
    assert out[0, 2].tolist() == [100, 100, 100]  # ignore
    for r, c in ((0, 1), (1, 0), (1, 2)):
        expected = np.floor(0.5 * 100 + 0.5 * palette[mask[r, c]] + 0.5)
        assert out[r, c].tolist() == expected.astype(int).tolist()


# -- training augmentation ----------------------------------------------------------------


def test_seg_train_transform_keeps_image_and_mask_aligned() -> None:
    """A mask drawn from the image's own colours must still match it after augmentation."""
    height, width = 40, 60
    image = np.zeros((height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    image[:, 30:] = 255  # right half white = class 1
    mask[:, 30:] = 1
    transform = SegTrainTransform(
        normalization=build_model("tiny", "seg").normalization,
        crop_size=64,
        resize_long=(50, 70),
        color_jitter=(0.0, 0.0, 0.0, 0.0),
    )
    for seed in range(6):
        x, out = transform(image, mask, np.random.default_rng(seed))
        assert x.shape == (3, 64, 64) and out.shape == (64, 64) and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 1, IGNORE_INDEX}
        assert (out == IGNORE_INDEX).any()  # the crop is larger than the resized image
        inside = out != IGNORE_INDEX
        white = x[0] > 0  # normalised white > 0 > normalised black
        agree = (white == (out == 1))[inside]
        assert agree.mean() > 0.97  # only the resized boundary column may differ


def test_seg_train_transform_rejects_a_mask_of_another_size() -> None:
    transform = SegTrainTransform(normalization=build_model("tiny", "seg").normalization)
    with pytest.raises(ValueError, match="mask"):
        transform(_image(10, 10), np.zeros((10, 11), np.uint8), np.random.default_rng(0))


# -- evaluation ------------------------------------------------------------------------


def test_mask_quality_by_hand() -> None:
    quality = MaskQuality(3)
    quality.add(np.array([[0, 1], [1, 2]]), np.array([[0, 1], [2, 255]]))
    result = quality.result()
    # class 0: 1/1; class 1: inter 1, union 2 (pred 2 pixels, gt 1); class 2: 0 / 1
    assert result["per_class_iou"] == pytest.approx([1.0, 0.5, 0.0])
    assert result["miou"] == pytest.approx(0.5)
    with pytest.raises(PsaError, match="ground truth"):
        quality.add(np.zeros((2, 2)), np.zeros((2, 3)))


def test_summary_gains_the_segmentation_row() -> None:
    cam = {"published_threshold": 0.2, "published_miou": 0.4, "best_threshold": 0.3}
    cam["best_miou"] = 0.45
    crf = {"miou": 0.7, "uncertain_fraction": 0.3}
    walk = {"published_value": 16.0, "published_miou": 0.5, "best_value": 8.0, "best_miou": 0.52}
    rows = summary_rows({"val": {"cam": cam, "crf": crf, "walk": walk, "seg": {"miou": 0.55}}})
    stages = [row["stage"] for row in rows]
    assert stages[-1] == "segmentation network" and rows[-1]["miou"] == 0.55
    assert "segmentation network" not in [
        r["stage"] for r in summary_rows({"val": {"cam": cam, "crf": crf, "walk": walk}})
    ]


# -- the model folder ---------------------------------------------------------------------


def _model_folder(tmp_path, net) -> object:
    folder = tmp_path / "model"
    folder.mkdir()
    io.save_torch(folder / WEIGHTS_FILE, net.state_dict())
    write_model_description(
        folder,
        backbone="tiny",
        dilation=2,
        classes=["a", "b", "c"],
        normalization=net.normalization,
        infer=SegmentationInferSettings(scales=(1.0, 0.5), flip=True, crf=False),
        settings={"training": {"epochs": 1}},
    )
    return folder


def test_model_folder_round_trip(tmp_path, model) -> None:
    folder = _model_folder(tmp_path, model)
    description = json.loads((folder / MODEL_FILE).read_text())
    assert description["classes"] == ["background", "a", "b", "c"]
    assert description["input"]["mean"] == list(model.normalization.mean)
    assert description["inference"] == {"scales": [1.0, 0.5], "flip": True, "crf": False}
    assert description["psa_core_version"] and description["format"].startswith("psa-seg-model/")
    loaded, _ = load_model_folder(folder, "cpu")
    assert not loaded.training
    image = _image(24, 32)
    np.testing.assert_array_equal(
        multiscale_softmax(loaded, [image], (1.0,)), multiscale_softmax(model, [image], (1.0,))
    )


def test_model_folder_errors_are_one_line(tmp_path, model) -> None:
    with pytest.raises(PsaError, match="model folder not found"):
        load_model_folder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PsaError, match="no model.json"):
        load_model_folder(empty)
    folder = _model_folder(tmp_path, model)
    description = json.loads((folder / MODEL_FILE).read_text())
    (folder / MODEL_FILE).write_text(json.dumps({**description, "format": "psa-seg-model/0"}))
    with pytest.raises(PsaError, match="model format 'psa-seg-model/0'.*retrain"):
        load_model_folder(folder)
    (folder / MODEL_FILE).write_text(json.dumps(description))
    other = build_model("tiny", "seg", num_classes=NUM_CLASSES, dilation=2)
    io.save_torch(folder / WEIGHTS_FILE, other.state_dict())
    with pytest.raises(PsaError, match="SHA-256"):
        load_model_folder(folder)


def test_segmentation_network_starts_from_the_cam_network(tmp_path) -> None:
    """init_weights "cam": the backbone comes from the trained classifier, the head is new."""
    from psa_core.models import create_model

    torch.manual_seed(1)
    cam = build_model("tiny", "cam", num_classes=NUM_CLASSES)
    io.save_torch(tmp_path / "cam.pt", cam.state_dict())
    seg = create_model("tiny", "seg", NUM_CLASSES, init_weights=tmp_path / "cam.pt", seed=0)
    for key, value in cam.backbone.state_dict().items():
        assert torch.equal(seg.backbone.state_dict()[key], value), key
    fresh = create_model("tiny", "seg", NUM_CLASSES, seed=0)
    assert torch.equal(seg.head.seg8.weight, fresh.head.seg8.weight)  # same seed, new head
    assert not torch.equal(seg.backbone.stem[0][0].weight, fresh.backbone.stem[0][0].weight)


def test_crf_post_processing_refines_the_fused_probabilities(model, tmp_path) -> None:
    """segment_images with crf: the argmax of the real dense CRF over the fused softmax."""
    from psa_core.crf import crf_inference
    from psa_core.segmentation import segment_images

    image = _image(40, 52, seed=3)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    common = {"scales": (1.0, 0.5), "flip": True, "batch_size": 2}
    [(_, _, plain)] = segment_images(model, [path], SegmentationInferSettings(crf=False, **common))
    [(_, _, refined)] = segment_images(model, [path], SegmentationInferSettings(crf=True, **common))
    probs = multiscale_softmax(model, [image], (1.0, 0.5), flip=True)[0]
    np.testing.assert_array_equal(plain, probs_to_mask(probs))
    np.testing.assert_array_equal(refined, probs_to_mask(crf_inference(image, probs)))
    assert refined.shape == image.shape[:2]


def test_size_batches_keeps_a_pass_within_a_pixel_budget() -> None:
    """Large images share a pass with fewer others; one too large for the budget goes alone."""
    images = [np.zeros((4, 4, 3))] * 3 + [np.zeros((8, 8, 3))] * 2
    assert list(size_batches(images, 8, max_pixels=32)) == [[0, 1], [2], [3], [4]]
    assert list(size_batches(images, 8, max_pixels=64)) == [[0, 1, 2], [3], [4]]
    assert list(size_batches(images, 2, max_pixels=10**6)) == [[0, 1], [2], [3, 4]]
