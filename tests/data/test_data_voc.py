"""VOC layout parsing: image lists, paths, labels from XML and masks, class names."""

from __future__ import annotations

import re

import numpy as np
import pytest

from psa_core import io
from psa_core.constants import VOC_CLASSES
from psa_core.data import (
    annotation_path,
    available_splits,
    gt_mask_path,
    image_path,
    labels_from_mask,
    labels_from_xml,
    read_classes,
    read_image_list,
)
from psa_core.errors import PsaError
from tests.data.helpers import AUG_ONLY, TREE_CLASSES, TREE_IMAGES, voc_xml


def test_read_image_list_plain(voc_tree):
    root = voc_tree()
    assert read_image_list(root, "train") == ["2007_000001", "2007_000002"]
    assert read_image_list(root, "val") == ["2008_000003"]


@pytest.mark.parametrize("aug_list", ["SegmentationAug", "Segmentation", "root"])
@pytest.mark.parametrize("aug_format", ["paths", "names"])
def test_read_image_list_train_aug(voc_tree, aug_list, aug_format):
    root = voc_tree(aug_list=aug_list, aug_format=aug_format)
    assert read_image_list(root, "train_aug") == ["2007_000001", "2007_000002", AUG_ONLY]
    assert "train_aug" in available_splits(root)


def test_read_image_list_keeps_dotted_names(tmp_path):
    io.write_lines(tmp_path / "ImageSets/Segmentation/odd.txt", ["img.v2 1", "/JPEGImages/a.b.jpg"])
    assert read_image_list(tmp_path, "odd") == ["img.v2", "a.b"]


def test_read_image_list_classification_columns(tmp_path):
    io.write_lines(tmp_path / "ImageSets/Segmentation/cls.txt", ["a  1", "b -1", "c  0"])
    assert read_image_list(tmp_path, "cls") == ["a", "b", "c"]


def test_read_image_list_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "ImageSets/Segmentation/bom.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes("\ufeff2007_000001\r\n2007_000002\r\n".encode())
    assert read_image_list(tmp_path, "bom") == ["2007_000001", "2007_000002"]


@pytest.mark.parametrize(
    "line",
    [
        "my photo",
        "my photo 1",
        "2007 000001 2",
        "/JPEGImages/my photo.jpg /SegmentationClassAug/my photo.png",
    ],
)
def test_read_image_list_refuses_a_name_with_whitespace(tmp_path, line):
    io.write_lines(tmp_path / "ImageSets/Segmentation/odd.txt", ["a", line])
    with pytest.raises(
        PsaError,
        match=rf"odd\.txt, line 2: '{re.escape(line)}' is not one image name .*; rename the image",
    ):
        read_image_list(tmp_path, "odd")


def test_read_image_list_not_utf8(tmp_path):
    path = tmp_path / "ImageSets/Segmentation/latin1.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a\ncaf\xe9\n")
    with pytest.raises(
        PsaError,
        match=r"latin1\.txt: not UTF-8 text \(byte 0xe9 on line 2\); save the file as UTF-8",
    ):
        read_image_list(tmp_path, "latin1")


def test_unknown_split_lists_existing(voc_tree):
    root = voc_tree()
    with pytest.raises(PsaError, match="unknown split 'trainn'") as err:
        read_image_list(root, "trainn")
    assert "train, train_aug, val" in str(err.value)


def test_classes_txt_is_not_a_split(synthetic_root):
    assert "classes" not in available_splits(synthetic_root)
    with pytest.raises(PsaError, match="existing splits: train, val"):
        read_image_list(synthetic_root, "classes")


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(PsaError, match=f"dataset root {missing} not found; set dataset.root"):
        read_image_list(missing, "train")


def test_duplicate_and_empty_lists(tmp_path):
    io.write_lines(tmp_path / "ImageSets/Segmentation/dup.txt", ["a", "b", "a"])
    with pytest.raises(PsaError, match=r"dup.txt: image 'a' listed twice \(lines 1 and 3\)"):
        read_image_list(tmp_path, "dup")
    io.write_lines(tmp_path / "ImageSets/Segmentation/empty.txt", [])
    with pytest.raises(PsaError, match="empty.txt: image list is empty"):
        read_image_list(tmp_path, "empty")


def test_paths(voc_tree):
    root = voc_tree()
    assert image_path(root, "2007_000001") == root / "JPEGImages/2007_000001.jpg"
    assert annotation_path(root, "2007_000001") == root / "Annotations/2007_000001.xml"
    assert gt_mask_path(root, "2007_000001") == root / "SegmentationClass/2007_000001.png"
    assert gt_mask_path(root, AUG_ONLY) == root / "SegmentationClassAug" / f"{AUG_ONLY}.png"
    assert gt_mask_path(root, "2099_000000") is None


def test_mask_prefers_segmentation_class(voc_tree):
    root = voc_tree()
    io.write_mask(root / "SegmentationClassAug/2007_000001.png", np.zeros((32, 40), np.uint8))
    assert gt_mask_path(root, "2007_000001").parent.name == "SegmentationClass"


def test_labels_from_xml_counts_difficult_skips_parts(voc_tree):
    root = voc_tree()
    labels = labels_from_xml(annotation_path(root, "2007_000002"), TREE_CLASSES)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [0, 1, 1]  # the difficult person counts; 'head'/'hand' are parts


def test_labels_from_xml_and_mask_agree(voc_tree):
    root = voc_tree()
    for name in TREE_IMAGES:
        from_xml = labels_from_xml(annotation_path(root, name), TREE_CLASSES)
        mask = io.read_mask(gt_mask_path(root, name))
        np.testing.assert_array_equal(from_xml, labels_from_mask(mask, len(TREE_CLASSES)))


def test_labels_from_xml_unknown_name(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(voc_xml("x", [("cat", False), ("unicorn", False)]))
    with pytest.raises(PsaError, match=r"x\.xml: unknown class name 'unicorn'"):
        labels_from_xml(path, TREE_CLASSES)


@pytest.mark.parametrize("text", ["<annotation><object>", "not xml at all"])
def test_labels_from_xml_malformed(tmp_path, text):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(PsaError, match=r"bad\.xml: not valid XML"):
        labels_from_xml(path, TREE_CLASSES)


def test_labels_from_xml_missing_file(tmp_path):
    with pytest.raises(PsaError, match=r"gone\.xml: annotation not found"):
        labels_from_xml(tmp_path / "gone.xml", TREE_CLASSES)


def test_labels_from_mask():
    mask = np.array([[0, 1, 255], [3, 3, 0]], dtype=np.uint8)
    assert labels_from_mask(mask, 4).tolist() == [1, 0, 1, 0]
    assert labels_from_mask(np.zeros((2, 2), np.uint8), 4).tolist() == [0, 0, 0, 0]
    assert labels_from_mask(np.full((2, 2), 255, np.uint8), 4).tolist() == [0, 0, 0, 0]


def test_labels_from_mask_index_too_large():
    with pytest.raises(PsaError, match=r"m\.png: mask holds class index 5 but only 4 classes"):
        labels_from_mask(np.array([[5, 1]], np.uint8), 4, source="m.png")


def test_read_classes_precedence(voc_tree):
    root = voc_tree()
    assert read_classes(root, None) == list(VOC_CLASSES)
    assert read_classes(root, []) == list(VOC_CLASSES)
    io.write_lines(root / "classes.txt", ["cat", "dog", "person"])
    assert read_classes(root, None) == ["cat", "dog", "person"]
    assert read_classes(root, ["a", "b"]) == ["a", "b"]
    # an explicit list needs no dataset root
    assert read_classes(root / "missing", ["a"]) == ["a"]


def test_read_classes_errors(voc_tree):
    root = voc_tree()
    io.write_lines(root / "classes.txt", ["background", "cat"])
    with pytest.raises(PsaError, match=r"classes\.txt: lists 'background'"):
        read_classes(root, None)
    io.write_lines(root / "classes.txt", ["cat", "cat"])
    with pytest.raises(PsaError, match=r"classes\.txt: class 'cat' is listed twice"):
        read_classes(root, None)
    with pytest.raises(PsaError, match="dataset.classes"):
        read_classes(root, ["dog", "dog"])
    with pytest.raises(PsaError, match="dataset root .* not found"):
        read_classes(root / "missing", None)
