"""The synthetic dataset: determinism, GT/label/XML consistency, sanity of the design."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from psa_core import io
from psa_core.constants import IGNORE_INDEX
from psa_core.data import (
    SYNTHETIC_CLASSES,
    annotation_path,
    generate_synthetic,
    gt_mask_path,
    image_path,
    index_split,
    labels_from_mask,
    labels_from_xml,
    read_classes,
    read_image_list,
)
from psa_core.data.synthetic import PART_STYLES, render_image, void_band
from psa_core.errors import PsaError
from tests.data.helpers import SYNTH_PARAMS

SMALL = {"num_train": 5, "num_val": 2, "image_size": (64, 96), "num_classes": 3}


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes(tmp_path):
    generate_synthetic(tmp_path / "a", seed=7, **SMALL)
    generate_synthetic(tmp_path / "b", seed=7, **SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 7 * 3 + 4  # jpg, png, xml per image + train, val, classes, synthetic.json
    assert a == b


def test_different_seed_differs(tmp_path):
    generate_synthetic(tmp_path / "a", seed=7, **SMALL)
    generate_synthetic(tmp_path / "b", seed=8, **SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    images = [k for k in a if k.suffix == ".jpg"]
    assert all(a[k] != b[k] for k in images)


def test_train_images_do_not_depend_on_num_val(tmp_path):
    generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    generate_synthetic(tmp_path / "b", seed=3, **{**SMALL, "num_val": 0})
    a = (tmp_path / "a/JPEGImages/syn_000004.jpg").read_bytes()
    assert a == (tmp_path / "b/JPEGImages/syn_000004.jpg").read_bytes()
    assert read_image_list(tmp_path / "b", "train") == [f"syn_{i:06d}" for i in range(5)]
    with pytest.raises(PsaError, match="existing splits: train"):
        read_image_list(tmp_path / "b", "val")


def test_layout_and_lists(synthetic_root):
    classes = read_classes(synthetic_root, None)
    assert classes == list(SYNTHETIC_CLASSES[: SYNTH_PARAMS["num_classes"]])
    train = read_image_list(synthetic_root, "train")
    val = read_image_list(synthetic_root, "val")
    assert len(train) == SYNTH_PARAMS["num_train"]
    assert len(val) == SYNTH_PARAMS["num_val"]
    assert not set(train) & set(val)
    assert train[0] == "syn_000000"


def _all_names(root):
    return read_image_list(root, "train") + read_image_list(root, "val")


def test_masks_labels_xml_agree(synthetic_root):
    classes = read_classes(synthetic_root, None)
    low, high = SYNTH_PARAMS["image_size"]
    for name in _all_names(synthetic_root):
        image = io.read_image(image_path(synthetic_root, name))
        mask_file = gt_mask_path(synthetic_root, name)
        assert mask_file is not None and mask_file.parent.name == "SegmentationClass"
        mask = io.read_mask(mask_file)
        height, width = mask.shape
        assert image.shape == (height, width, 3)
        assert low <= height <= high and low <= width <= high
        values = set(np.unique(mask).tolist())
        assert values <= {0, IGNORE_INDEX, *range(1, len(classes) + 1)}
        from_mask = labels_from_mask(mask, len(classes))
        xml_file = annotation_path(synthetic_root, name)
        np.testing.assert_array_equal(labels_from_xml(xml_file, classes), from_mask)
        assert from_mask.sum() >= 1, f"{name} has no object"

        tree = ET.parse(xml_file).getroot()
        assert tree.findtext("filename") == f"{name}.jpg"
        assert (int(tree.findtext("size/width")), int(tree.findtext("size/height"))) == (
            width,
            height,
        )
        for obj in tree.findall("object"):
            xmin, ymin, xmax, ymax = (
                int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height
            index = classes.index(obj.findtext("name")) + 1
            box = mask[ymin - 1 : ymax, xmin - 1 : xmax]
            assert (box == index).any()  # the object's class is inside its box


def test_index_split_on_synthetic(synthetic_root):
    classes = read_classes(synthetic_root, None)
    indexed = index_split(synthetic_root, "val", classes)
    assert list(indexed) == read_image_list(synthetic_root, "val")
    for name, (label, files) in indexed.items():
        assert files.mask == gt_mask_path(synthetic_root, name)
        mask = io.read_mask(files.mask)
        np.testing.assert_array_equal(label, labels_from_mask(mask, len(classes)))


def test_dataset_statistics(synthetic_root):
    classes = read_classes(synthetic_root, None)
    names = _all_names(synthetic_root)
    labels = np.stack([labels_from_xml(annotation_path(synthetic_root, n), classes) for n in names])
    per_class = labels.sum(0)
    assert per_class.min() >= 0.15 * len(names), per_class  # every class is well represented
    assert (labels.sum(1) >= 2).any()  # multi-label images exist
    assert labels.sum(1).max() <= 2
    objects = [
        ET.parse(annotation_path(synthetic_root, n)).getroot().findall("object") for n in names
    ]
    counts = [len(objs) for objs in objects]
    assert min(counts) >= 1 and max(counts) <= 3
    flat = [obj for objs in objects for obj in objs]
    assert any(obj.findtext("truncated") == "1" for obj in flat)  # some touch the border
    assert any(obj.findtext("occluded") == "1" for obj in flat)  # some overlap
    fg = [
        ((m > 0) & (m < IGNORE_INDEX)).mean()
        for m in (io.read_mask(gt_mask_path(synthetic_root, n)) for n in names)
    ]
    assert 0.05 < np.mean(fg) < 0.5


def test_parts_are_the_only_saturated_object_pixels():
    """Bodies are low-saturation; the part (10-20 % of the object) carries the class colour."""
    fractions = []
    for index in range(20):
        rng = np.random.default_rng([0, index])
        sample = render_image(rng, 128, 128, 4)
        image = sample.image.astype(np.float32)
        saturation = (image.max(-1) - image.min(-1)) / np.maximum(image.max(-1), 1)
        for class_id in np.flatnonzero(sample.labels):
            obj = sample.mask == class_id + 1
            colour = np.float32(PART_STYLES[SYNTHETIC_CLASSES[class_id]][0])
            vivid = obj & (saturation > 0.6)
            fractions.append(vivid.sum() / obj.sum())
            # the vivid pixels are the class colour or its dark shade: same hue direction
            pixels = image[vivid]
            cosine = pixels @ colour / (np.linalg.norm(pixels, axis=1) * np.linalg.norm(colour))
            assert np.median(cosine) > 0.95
    assert 0.05 < np.median(fractions) < 0.3


def test_void_band_width():
    instances = np.zeros((9, 9), np.int32)
    instances[3:6, 3:6] = 1
    assert not void_band(instances, 0).any()
    # width 1: one pixel on each side of the boundary, a 5x5 ring around the 3x3 square
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = True
    expected[4, 4] = False
    np.testing.assert_array_equal(void_band(instances, 1), expected)
    # width 2: two pixels on each side, which covers the whole 7x7 block
    expected = np.zeros((9, 9), bool)
    expected[1:8, 1:8] = True
    np.testing.assert_array_equal(void_band(instances, 2), expected)
    # the image border is not a boundary
    assert not void_band(np.ones((5, 5), np.int32), 2).any()


@pytest.mark.parametrize("void_width", [0, 2])
def test_void_width_option(void_width):
    sample = render_image(np.random.default_rng(1), 100, 120, 4, void_width=void_width)
    assert ((sample.mask == IGNORE_INDEX).any()) == (void_width > 0)
    assert sample.labels.sum() >= 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"num_classes": 99}, "synthetic.num_classes"),
        ({"num_train": 0}, "synthetic.num_train"),
        ({"image_size": (160, 96)}, "synthetic.image_size"),
        ({"seed": -1}, "synthetic.seed"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, key):
    with pytest.raises(PsaError, match=key):
        generate_synthetic(tmp_path, **kwargs)
