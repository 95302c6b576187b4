"""Split indexing, the labels artifact, shards, and the bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from psa_core import io
from psa_core.data import (
    index_split,
    num_shards,
    read_labels,
    select_shard,
    shard_slice,
    write_labels,
)
from psa_core.errors import PsaError
from tests.data.helpers import AUG_ONLY, TREE_CLASSES


def test_index_split_labels_from_xml_else_mask(voc_tree):
    root = voc_tree()
    indexed = index_split(root, "train_aug", TREE_CLASSES)
    labels = {name: label for name, (label, _) in indexed.items()}
    assert list(labels) == ["2007_000001", "2007_000002", AUG_ONLY]
    assert labels["2007_000001"].tolist() == [1, 0, 0]
    assert labels["2007_000002"].tolist() == [0, 1, 1]
    assert labels[AUG_ONLY].tolist() == [0, 1, 0]  # no XML: from SegmentationClassAug
    assert all(v.dtype == np.uint8 for v in labels.values())
    files = indexed[AUG_ONLY][1]  # the files each later stage reads, from the index
    assert files.image == root / "JPEGImages" / f"{AUG_ONLY}.jpg"
    assert files.mask == root / "SegmentationClassAug" / f"{AUG_ONLY}.png"


def test_index_split_shard_is_the_split_index_cut_to_the_shard(voc_tree):
    root = voc_tree()
    whole = index_split(root, "train_aug", TREE_CLASSES)
    first = index_split(root, "train_aug", TREE_CLASSES, shard=0, shard_size=2)
    last = index_split(root, "train_aug", TREE_CLASSES, shard=1, shard_size=2)  # 1 of 2
    assert list(first) == ["2007_000001", "2007_000002"] and list(last) == [AUG_ONLY]
    for name, (label, files) in {**first, **last}.items():
        assert label.tolist() == whole[name][0].tolist() and files == whole[name][1], name


def test_index_split_shard_reads_only_its_own_images(voc_tree):
    root = voc_tree()
    (root / "JPEGImages" / f"{AUG_ONLY}.jpg").write_bytes(b"not a jpeg")
    assert list(index_split(root, "train_aug", TREE_CLASSES, shard=0, shard_size=2))
    with pytest.raises(PsaError, match=rf"{AUG_ONLY}\.jpg: cannot decode image"):
        index_split(root, "train_aug", TREE_CLASSES, shard=1, shard_size=2)


def test_index_split_shard_out_of_range_names_the_list(voc_tree):
    root = voc_tree()
    with pytest.raises(
        PsaError,
        match=r"train_aug\.txt: shard 2 does not exist: 3 images in shards of 2 give shards 0\.\.1",
    ):
        index_split(root, "train_aug", TREE_CLASSES, shard=2, shard_size=2)


def test_index_split_image_missing(voc_tree):
    root = voc_tree()
    (root / "JPEGImages/2007_000002.jpg").unlink()
    with pytest.raises(PsaError, match=r"2007_000002\.jpg: image listed in .*train\.txt not found"):
        index_split(root, "train", TREE_CLASSES)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_index_split_image_unreadable(voc_tree, damage):
    root = voc_tree()
    path = root / "JPEGImages/2007_000002.jpg"
    data = path.read_bytes()
    bad = {
        "garbage": b"this is not a jpeg" * 50,
        "truncated": data[: len(data) * 2 // 3],
        "empty": b"",
    }
    path.write_bytes(bad[damage])
    with pytest.raises(PsaError, match=r"2007_000002\.jpg: cannot decode image"):
        index_split(root, "train", TREE_CLASSES)


def test_index_split_mask_size_differs(voc_tree):
    root = voc_tree()
    io.write_mask(root / "SegmentationClass/2007_000001.png", np.zeros((30, 40), np.uint8))
    with pytest.raises(
        PsaError, match=r"2007_000001\.png: mask is 40x30 but image 2007_000001\.jpg is 40x32"
    ):
        index_split(root, "train", TREE_CLASSES)


def test_index_split_mask_garbage(voc_tree):
    root = voc_tree()
    (root / "SegmentationClass/2007_000001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(PsaError, match=r"2007_000001\.png: cannot decode mask"):
        index_split(root, "train", TREE_CLASSES)


@pytest.mark.parametrize(
    "array",
    [np.zeros((32, 40), np.float32), np.full((32, 40), 70_000, np.int32)],
    ids=["F", "I beyond 16 bit"],
)
def test_index_split_refuses_what_read_image_refuses_with_its_line(voc_tree, array):
    root = voc_tree()
    path = root / "JPEGImages/2007_000002.jpg"  # PIL opens it by its content (TIFF)
    Image.fromarray(array).save(path, format="TIFF")
    with pytest.raises(PsaError) as read:
        io.read_image(path)
    with pytest.raises(PsaError) as indexed:
        index_split(root, "train", TREE_CLASSES)
    assert str(indexed.value) == str(read.value)
    assert "convert the image to 8 or 16 bit" in str(read.value)


def test_index_split_pixel_limit_on_images_and_masks(voc_tree, monkeypatch):
    root = voc_tree()
    monkeypatch.setenv("PSA_MAX_IMAGE_PIXELS", str(40 * 32 - 1))
    with pytest.raises(
        PsaError, match=r"2007_000001\.jpg: 40 x 32 = 1280 pixels is over the limit of 1279"
    ):
        index_split(root, "train", TREE_CLASSES)
    monkeypatch.setenv("PSA_MAX_IMAGE_PIXELS", str(40 * 32))
    assert list(index_split(root, "train", TREE_CLASSES))
    io.write_image(root / "JPEGImages/2007_000001.jpg", np.zeros((30, 40, 3), np.uint8))
    io.write_mask(root / "SegmentationClass/2007_000001.png", np.zeros((33, 40), np.uint8))
    with pytest.raises(PsaError, match=r"2007_000001\.png: 40 x 33 = 1320 pixels is over"):
        index_split(root, "train", TREE_CLASSES)


def test_index_split_refuses_a_colour_mask(voc_tree):
    root = voc_tree()
    Image.new("RGB", (40, 32)).save(root / "SegmentationClass/2007_000001.png")
    with pytest.raises(
        PsaError,
        match=r"2007_000001\.png: mask has mode RGB; save the mask as a palette or 8-bit grey PNG",
    ):
        index_split(root, "train", TREE_CLASSES)


def test_index_split_unknown_class_in_xml(voc_tree):
    root = voc_tree()
    with pytest.raises(PsaError, match=r"2007_000002\.xml: unknown class name 'person'"):
        index_split(root, "train", ["cat", "dog"])


def test_index_split_no_annotation_no_mask(voc_tree):
    root = voc_tree()
    (root / "Annotations/2008_000003.xml").unlink()
    (root / "SegmentationClass/2008_000003.png").unlink()
    with pytest.raises(PsaError, match=r"2008_000003\.xml: no annotation and no GT mask"):
        index_split(root, "val", TREE_CLASSES)


def test_index_split_unknown_split_and_missing_root(voc_tree, tmp_path):
    root = voc_tree()
    with pytest.raises(PsaError, match=r"unknown split 'test' .*existing splits: train, "):
        index_split(root, "test", TREE_CLASSES)
    with pytest.raises(PsaError, match="dataset root .*absent not found"):
        index_split(tmp_path / "absent", "train", TREE_CLASSES)


def test_labels_round_trip(tmp_path):
    labels = {"b": np.array([1, 0, 1], np.uint8), "a": np.array([0, 0, 0], np.uint8)}
    path = tmp_path / "labels.json"
    write_labels(path, TREE_CLASSES, labels)
    assert json.loads(path.read_text()) == {
        "classes": TREE_CLASSES,
        "images": {"b": [0, 2], "a": []},
    }
    classes, back = read_labels(path)
    assert classes == TREE_CLASSES
    assert list(back) == ["b", "a"]
    assert back["b"].dtype == np.float32
    np.testing.assert_array_equal(back["b"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(back["a"], [0.0, 0.0, 0.0])


def test_write_labels_rejects_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_labels(tmp_path / "l.json", TREE_CLASSES, {"a": np.ones(2)})


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"classes": ["cat"], "images": {"a": [0]', "not valid JSON"),
        ("[1, 2]", "not a labels file"),
        ('{"classes": ["cat"]}', "no 'images' mapping"),
        ('{"classes": [], "images": {}}', "non-empty list"),
        ('{"classes": ["cat"], "images": {"a": [1]}}', "labels of 'a' must be class ids in 0..0"),
        ('{"classes": ["cat"], "images": {"a": "0"}}', "labels of 'a'"),
    ],
)
def test_read_labels_corrupt(tmp_path, content, message):
    path = tmp_path / "labels_train.json"
    path.write_text(content)
    with pytest.raises(PsaError, match=rf"labels_train\.json: .*{message}"):
        read_labels(path)


def test_read_labels_missing(tmp_path):
    with pytest.raises(PsaError, match=r"nothing\.json: file not found"):
        read_labels(tmp_path / "nothing.json")


def test_shards():
    names = [f"n{i}" for i in range(7)]
    assert num_shards(7, 3) == 3
    assert num_shards(6, 3) == 2
    assert num_shards(0, 3) == 0
    assert [shard_slice(names, 3, i) for i in range(3)] == [names[0:3], names[3:6], names[6:7]]
    assert shard_slice(names, 100, 0) == names
    with pytest.raises(
        PsaError, match="shard 3 does not exist: 7 images in shards of 3 give shards 0..2"
    ):
        shard_slice(names, 3, 3)
    with pytest.raises(PsaError, match="shard -1 does not exist"):
        shard_slice(names, 3, -1)
    with pytest.raises(PsaError, match="dataset.shard_size is 0"):
        num_shards(7, 0)


def test_select_shard_both_or_neither():
    names = [f"n{i}" for i in range(5)]
    assert select_shard(names, None, None) == names
    assert select_shard(names, 1, 3) == ["n3", "n4"]
    for shard, shard_size in ((1, None), (None, 3)):
        with pytest.raises(PsaError, match="--shard and --shard-size go together"):
            select_shard(names, shard, shard_size)
