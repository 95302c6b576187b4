"""psa_core.transforms: the training augmentation of docs/design.md §1.1."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from psa_core.constants import IGNORE_INDEX
from psa_core.transforms import (
    IMAGENET_NORMALIZATION,
    CamTrainTransform,
    center_crop_box,
    color_jitter,
    crop,
    hflip,
    long_side_size,
    random_crop,
    random_crop_box,
    random_hflip,
    random_resize_long,
    resize,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)


# -- crop -----------------------------------------------------------------------


def test_crop_pads_with_zeros_where_image_is_smaller_and_reuses_box():
    image = np.full((10, 12, 3), 7, dtype=np.uint8)
    label = np.full((10, 12), 3, dtype=np.uint8)
    out_img, out_lab = random_crop([image, label], 16, rng=rng(1), pad_values=(0, IGNORE_INDEX))
    assert out_img.shape == (16, 16, 3) and out_img.dtype == np.uint8
    assert out_lab.shape == (16, 16) and out_lab.dtype == np.uint8
    inside = out_img[..., 0] == 7
    assert inside.sum() == 10 * 12  # the whole image, somewhere in the output
    rows, cols = np.nonzero(inside)
    assert rows.max() - rows.min() + 1 == 10 and cols.max() - cols.min() + 1 == 12
    assert (out_img[~inside] == 0).all()
    np.testing.assert_array_equal(out_lab == 3, inside)  # same box for the extra array
    assert (out_lab[~inside] == IGNORE_INDEX).all()


def test_crop_window_of_larger_image_is_a_slice_applied_to_all_arrays():
    image = random_image(30, 40)
    scores = rng(2).random((30, 40, 5)).astype(np.float32)
    for seed in range(20):
        box = random_crop_box((30, 40), 16, rng=rng(seed))
        assert (box.dst_top, box.dst_left, box.height, box.width) == (0, 0, 16, 16)
        assert 0 <= box.src_top <= 14 and 0 <= box.src_left <= 24
        out_img, out_sc = random_crop([image, scores], 16, rng=rng(seed))
        y, x = box.src_top, box.src_left
        np.testing.assert_array_equal(out_img, image[y : y + 16, x : x + 16])
        np.testing.assert_array_equal(out_sc, scores[y : y + 16, x : x + 16])


def test_crop_mixed_axes_and_offsets_cover_the_range():
    # taller than the crop, narrower than it: slide vertically, pad horizontally
    tops, lefts = set(), set()
    for seed in range(200):
        box = random_crop_box((20, 5), 8, rng=rng(seed))
        assert box.dst_top == 0 and box.height == 8 and box.src_left == 0 and box.width == 5
        tops.add(box.src_top)
        lefts.add(box.dst_left)
    assert tops == set(range(13)) and lefts == set(range(4))


def test_center_crop_box():
    box = center_crop_box((10, 30), 20)
    assert (box.src_top, box.dst_top, box.height) == (0, 5, 10)
    assert (box.src_left, box.dst_left, box.width) == (5, 0, 20)
    out = crop(np.ones((10, 30), np.float32), box, pad_value=-1.0)
    assert out.shape == (20, 20) and (out[5:15] == 1).all() and (out[:5] == -1).all()


# -- flip -----------------------------------------------------------------------


def test_hflip_mirrors_width_of_all_arrays_together():
    image = random_image(4, 6)
    label = np.arange(24, dtype=np.uint8).reshape(4, 6)
    np.testing.assert_array_equal(hflip(image)[:, 0], image[:, -1])
    np.testing.assert_array_equal(hflip(hflip(image)), image)
    flipped = [random_hflip([image, label], rng=rng(s)) for s in range(20)]
    n_flipped = 0
    for out_img, out_lab in flipped:
        was = not np.array_equal(out_lab, label)
        n_flipped += was
        np.testing.assert_array_equal(out_img, hflip(image) if was else image)
        np.testing.assert_array_equal(out_lab, hflip(label) if was else label)
    assert 0 < n_flipped < 20
    always = random_hflip([label], rng=rng(0), p=1.0)[0]
    np.testing.assert_array_equal(always, label[:, ::-1])


# -- resize -----------------------------------------------------------------------


def test_long_side_size_keeps_aspect():
    assert long_side_size((100, 50), 256) == (256, 128)
    assert long_side_size((50, 100), 256) == (128, 256)
    assert long_side_size((300, 1), 10) == (10, 1)  # never 0


def test_random_resize_long_range_and_joint_arrays():
    image = random_image(30, 45)
    label = rng(1).integers(0, 4, size=(30, 45)).astype(np.uint8)
    scores = rng(2).random((30, 45, 3)).astype(np.float32)
    sides = set()
    for seed in range(100):
        out_img, out_lab, out_sc = random_resize_long(
            [image, label, scores],
            20,
            24,
            rng=rng(seed),
            interpolations=("bicubic", "nearest", "bilinear"),
        )
        h, w = out_img.shape[:2]
        assert 20 <= w <= 24 and h == round(30 * w / 45)
        sides.add(w)
        assert out_lab.shape == (h, w) and out_sc.shape == (h, w, 3)
        assert out_img.dtype == np.uint8 and out_sc.dtype == np.float32
        assert set(np.unique(out_lab)) <= set(np.unique(label))  # nearest: no new values
    assert sides == set(range(20, 25))  # both ends inclusive


def test_resize_integer_labels_exact_with_nearest():
    label = np.arange(12, dtype=np.int64).reshape(3, 4)
    out = resize(label, (6, 8), "nearest")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.repeat(np.repeat(label, 2, axis=0), 2, axis=1))


# -- colour jitter -----------------------------------------------------------------


def test_color_jitter_identity_at_zero_strength():
    image = random_image(9, 11)
    out = color_jitter(image, rng=rng(0), brightness=0, contrast=0, saturation=0, hue=0)
    np.testing.assert_array_equal(out, image)


def test_color_jitter_keeps_uint8_and_changes_image():
    image = random_image(16, 16)
    outs = [color_jitter(image, rng=rng(s)) for s in range(5)]
    for out in outs:
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert not np.array_equal(out, image)
    np.testing.assert_array_equal(color_jitter(image, rng=rng(3)), outs[3])


def test_color_jitter_brightness_scales_pixels():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    out = color_jitter(image, rng=rng(0), brightness=0.3, contrast=0, saturation=0, hue=0)
    factor = out[0, 0, 0] / 100
    assert 0.7 <= factor <= 1.3 and (out == out[0, 0, 0]).all()


def test_color_jitter_hue_rotates_hue_only():
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    image[0, 0] = (200, 50, 50)  # saturated red
    image[0, 1] = (90, 90, 90)  # grey: no hue to rotate
    out = color_jitter(image, rng=rng(5), brightness=0, contrast=0, saturation=0, hue=0.1)
    np.testing.assert_array_equal(out[0, 1], image[0, 1])
    h0, _, v0 = colorsys.rgb_to_hsv(*(image[0, 0] / 255))
    h1, _, v1 = colorsys.rgb_to_hsv(*(out[0, 0] / 255))
    shift = (h1 - h0 + 0.5) % 1 - 0.5
    assert 0 < abs(shift) <= 0.1 + 2 / 255
    assert abs(v1 - v0) <= 2 / 255


def test_color_jitter_rejects_bad_strength():
    with pytest.raises(ValueError, match="hue"):
        color_jitter(random_image(2, 2), rng=rng(0), hue=0.7)


# -- the CAM training transform ----------------------------------------------------


def test_cam_train_transform_shape_padding_and_determinism():
    transform = CamTrainTransform(IMAGENET_NORMALIZATION, crop_size=48, resize_long=(24, 32))
    image = random_image(30, 40)
    a = transform(image, rng(7))
    assert a.shape == (3, 48, 48) and a.dtype == np.float32 and a.flags.c_contiguous
    # long side <= 32 < 48: at least 16 rows and 16 columns are zero padding
    pad = (a == 0).all(axis=0)
    assert pad.all(axis=1).sum() >= 16 and pad.all(axis=0).sum() >= 16
    np.testing.assert_array_equal(transform(image, rng(7)), a)
    assert not np.array_equal(transform(image, rng(8)), a)


def test_cam_train_transform_without_augmentation_is_normalise_and_crop():
    transform = CamTrainTransform(
        IMAGENET_NORMALIZATION,
        crop_size=16,
        resize_long=None,
        flip=False,
        color_jitter=(0, 0, 0, 0),
    )
    image = random_image(16, 16)
    np.testing.assert_allclose(transform(image, rng(0)), IMAGENET_NORMALIZATION.numpy(image))


def test_cam_train_transform_validates():
    with pytest.raises(ValueError, match="resize_long"):
        CamTrainTransform(IMAGENET_NORMALIZATION, resize_long=(40, 20))


# -- working size (docs/design.md §1.8) ----------------------------------------------


def test_working_size_by_hand() -> None:
    from psa_core.transforms import working_size

    assert working_size(80, 100, 64) == (51, 64)  # 80 * 64 / 100 = 51.2
    assert working_size(100, 80, 64) == (64, 51)
    assert working_size(3000, 4000, 1024) == (768, 1024)
    assert working_size(4000, 3000, 1024) == (1024, 768)
    assert working_size(100, 100, 64) == (64, 64)
    assert working_size(76, 100, 64) == (49, 64)  # 48.64 rounds up
    assert working_size(64, 40, 64) == (64, 40)  # at max_side: untouched
    assert working_size(500, 375, 1024) == (500, 375)  # a VOC image
    assert working_size(3000, 4000, None) == (3000, 4000)  # no limit


def test_is_scaling_of_accepts_the_image_and_its_working_sizes_only() -> None:
    from psa_core.transforms import is_scaling_of

    assert is_scaling_of((80, 100), (80, 100))
    assert is_scaling_of((51, 64), (80, 100))
    assert is_scaling_of((40, 50), (80, 100))
    assert not is_scaling_of((52, 64), (80, 100))  # one row off
    assert not is_scaling_of((51, 65), (80, 100))
    assert not is_scaling_of((64, 51), (80, 100))  # transposed
    assert not is_scaling_of((160, 200), (80, 100))  # larger than the image


def test_to_size_of_scales_images_and_masks_or_says_none() -> None:
    from PIL import Image

    from psa_core.transforms import to_size_of, to_working_size

    image = rng(0).integers(0, 256, size=(80, 100, 3)).astype(np.uint8)
    assert to_size_of(image, (80, 100)) is image  # no copy when it fits
    assert to_working_size(image, 100) is image
    small = to_size_of(image, (51, 64))
    assert small.shape == (51, 64, 3) and small.flags.writeable
    np.testing.assert_array_equal(small, to_working_size(image, 64))
    expected = Image.fromarray(image).resize((64, 51), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(small, np.asarray(expected))
    mask = rng(1).choice(np.array([0, 1, 255], dtype=np.uint8), size=(80, 100))
    scaled = to_size_of(mask, (51, 64), "nearest")
    assert scaled.dtype == np.uint8 and set(np.unique(scaled)) <= {0, 1, 255}
    assert to_size_of(image, (51, 65)) is None
    assert to_size_of(mask, (81, 100), "nearest") is None
