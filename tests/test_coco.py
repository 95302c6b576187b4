"""COCO-format datasets (psa_core.data.coco, `psa coco-split`) on a small drawn dataset.

Every mask is drawn with numpy first and handed to the annotation file as a
polygon, a compressed RLE (pycocotools' own encoder) or an uncompressed RLE
(run lengths counted here); the rasterised masks must give back the drawings
pixel for pixel.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from psa_core import io
from psa_core.constants import IGNORE_INDEX
from psa_core.data import coco
from psa_core.errors import PsaError
from tests.cli_helpers import psa_in_process

SPLIT = "train2014"
CAT, DOG, LIGHT = 3, 7, 11
"""Category ids (not contiguous); classes 1, 2, 3 in that order."""
CATEGORIES = [  # listed out of order: the class order comes from the ids
    {"id": LIGHT, "name": "traffic light", "supercategory": "outdoor"},
    {"id": CAT, "name": "cat", "supercategory": "animal"},
    {"id": DOG, "name": "dog", "supercategory": "animal"},
]


def rectangle(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    drawn = np.zeros((height, width), dtype=bool)
    drawn[y0:y1, x0:x1] = True
    return drawn


def ellipse(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    y, x = np.mgrid[:height, :width] + 0.5  # pixel centres
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def polygon_of(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A rectangle's corners as a COCO polygon (one ring)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def compressed_rle(drawn: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(drawn.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(drawn: np.ndarray) -> dict:
    """Run lengths of the column-major pixels, starting with a run of zeros."""
    flat = drawn.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = [0, *edges.tolist(), flat.size]
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(drawn.shape), "counts": runs}


# Image a.jpg (20 x 30): a large cat rectangle (polygon) with a small dog ellipse
# (compressed RLE) on it; the dog comes first in the file and has the lower id, so
# only painting by area keeps it visible.
A_CAT = rectangle(20, 30, 2, 3, 24, 17)
A_DOG = ellipse(20, 30, 12.0, 10.0, 6.0, 4.0)
# Image c.jpg (18 x 18): a traffic-light crowd region (uncompressed RLE) partly
# covered by a dog (uncompressed RLE).
C_CROWD = rectangle(18, 18, 2, 2, 12, 12)
C_DOG = rectangle(18, 18, 8, 8, 16, 16)
# Image d.jpg (8 x 9): a cat crowd region (compressed RLE) and a traffic light with
# a box only.
D_CROWD = ellipse(8, 9, 4.0, 4.0, 3.0, 2.5)


def small_coco() -> dict:
    images = [
        {"id": 10, "file_name": "a.jpg", "height": 20, "width": 30},
        {"id": 20, "file_name": "b.png", "height": 16, "width": 24},  # no annotation
        {"id": 30, "file_name": "c.jpg", "height": 18, "width": 18},
        {"id": 40, "file_name": "d.jpg", "height": 8, "width": 9},
    ]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": DOG, "iscrowd": 0,
         "segmentation": compressed_rle(A_DOG)},
        {"id": 2, "image_id": 10, "category_id": CAT, "iscrowd": 0,
         "segmentation": polygon_of(2, 3, 24, 17)},
        {"id": 3, "image_id": 30, "category_id": LIGHT, "iscrowd": 1,
         "segmentation": uncompressed_rle(C_CROWD)},
        {"id": 4, "image_id": 30, "category_id": DOG, "iscrowd": 0,
         "segmentation": uncompressed_rle(C_DOG)},
        {"id": 5, "image_id": 40, "category_id": CAT, "iscrowd": 1,
         "segmentation": compressed_rle(D_CROWD)},
        {"id": 6, "image_id": 40, "category_id": LIGHT, "iscrowd": 0, "bbox": [1, 1, 2, 2]},
    ]  # fmt: skip
    return {"images": images, "categories": CATEGORIES, "annotations": annotations}


def expected_masks() -> dict[str, np.ndarray]:
    a = np.zeros((20, 30), np.uint8)
    a[A_CAT] = 1
    a[A_DOG] = 2
    c = np.zeros((18, 18), np.uint8)
    c[C_CROWD] = IGNORE_INDEX
    c[C_DOG] = 2
    d = np.zeros((8, 9), np.uint8)
    d[D_CROWD] = IGNORE_INDEX
    return {"a": a, "c": c, "d": d}


def write_coco(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A COCO root with annotations/instances_train2014.json (no image files needed)."""
    root = tmp_path / "coco"
    write_coco(root / "annotations" / f"instances_{SPLIT}.json", small_coco())
    return root


def annotation_file(root: Path) -> Path:
    return root / coco.ANNOTATIONS_PATTERN.format(split=SPLIT)


def one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(excinfo.value)
    assert "\n" not in text
    for part in parts:
        assert part in text


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools'
def test_drawn_shapes_are_what_the_file_says() -> None:
    """The helpers' encodings decode to the drawings (pycocotools as the referee)."""
    assert (mask_utils.decode(compressed_rle(A_DOG)) == A_DOG).all()
    rle = uncompressed_rle(C_DOG)
    assert (mask_utils.decode(mask_utils.frPyObjects(rle, 18, 18)) == C_DOG).all()
    poly = mask_utils.merge(mask_utils.frPyObjects(polygon_of(2, 3, 24, 17), 20, 30))
    assert (mask_utils.decode(poly) == A_CAT).all()  # the documented boundary rule
    assert A_DOG.sum() < A_CAT.sum() and (A_DOG <= A_CAT).all()


def test_classes_sorted_by_category_id(dataset: Path) -> None:
    data = coco.load_coco(annotation_file(dataset))
    ids, names = coco.coco_classes(data)
    assert ids == [CAT, DOG, LIGHT]
    assert names == ["cat", "dog", "traffic light"]
    assert coco.class_indices(data) == {CAT: 1, DOG: 2, LIGHT: 3}


def test_split_listing_leaves_out_images_without_annotations(dataset: Path) -> None:
    names, has_masks, _ = coco.split_listing(annotation_file(dataset))
    assert names == ["a", "c", "d"]
    assert has_masks is True


def test_split_listing_without_segmentations(tmp_path: Path) -> None:
    data = small_coco()
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
    names, has_masks, _ = coco.split_listing(write_coco(tmp_path / "boxes.json", data))
    assert names == ["a", "c", "d"]
    assert has_masks is False


def test_rasterise_gives_the_drawings(dataset: Path) -> None:
    data = coco.load_coco(annotation_file(dataset))
    by_image = coco.annotations_by_image(data)
    expected = expected_masks()
    for image in data["images"]:
        name = coco.image_name(image)
        if name not in expected:
            continue
        mask = coco.rasterise(data, image, by_image[image["id"]])
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected[name], err_msg=name)


def test_rasterise_equal_areas_larger_id_on_top() -> None:
    data = {"images": [], "categories": CATEGORIES, "annotations": []}
    image = {"id": 1, "file_name": "e.jpg", "height": 10, "width": 10}
    first = {"id": 8, "category_id": CAT, "segmentation": polygon_of(0, 0, 5, 5)}
    second = {"id": 9, "category_id": DOG, "segmentation": polygon_of(3, 3, 8, 8)}
    expected = np.zeros((10, 10), np.uint8)
    expected[0:5, 0:5] = 1
    expected[3:8, 3:8] = 2
    for anns in ([first, second], [second, first]):  # file order does not matter
        np.testing.assert_array_equal(coco.rasterise(data, image, anns), expected)


def test_rasterise_drops_rings_without_area() -> None:
    data = {"images": [], "categories": CATEGORIES, "annotations": []}
    image = {"id": 1, "file_name": "e.jpg", "height": 10, "width": 10}
    ann = {"id": 1, "category_id": CAT, "segmentation": [[1, 1, 4, 4], *polygon_of(5, 5, 9, 9)]}
    expected = np.zeros((10, 10), np.uint8)
    expected[5:9, 5:9] = 1
    np.testing.assert_array_equal(coco.rasterise(data, image, [ann]), expected)


def test_rasterise_takes_every_pycocotools_rle() -> None:
    """The RLE length check reads pycocotools' strings as pycocotools does: random masks
    (empty, full, noisy; odd sizes) come back unchanged from either RLE form."""
    data = {"images": [], "categories": CATEGORIES, "annotations": []}
    rng = np.random.default_rng(0)
    for trial in range(60):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        drawn = rng.random((height, width)) < rng.random()
        if trial < 2:  # the empty and the full mask
            drawn[:] = bool(trial)
        image = {"id": 1, "file_name": "r.jpg", "height": height, "width": width}
        for seg in (compressed_rle(drawn), uncompressed_rle(drawn)):
            ann = {"id": 1, "category_id": DOG, "segmentation": seg}
            mask = coco.rasterise(data, image, [ann])
            np.testing.assert_array_equal(mask, np.where(drawn, 2, 0).astype(np.uint8))


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [5, 6], "counts": [30]}, "not the image's [height, width] [4, 6]"),
        ({"size": [4, 6], "counts": [20, 2]}, "cover 22 pixels, not 4 x 6"),
        ({"size": [4, 6], "counts": "0;"}, "cover"),
        ({"size": [4, 6], "counts": "~~~"}, "neither a list of run lengths"),
        ([[1, 1, 3, 1, 3]], "odd count"),
        ("M 1 1", "neither polygons nor an RLE"),
    ],
)
def test_rasterise_refuses_malformed_segmentations(segmentation, message: str) -> None:
    data = {"images": [], "categories": CATEGORIES, "annotations": []}
    image = {"id": 1, "file_name": "e.jpg", "height": 4, "width": 6}
    ann = {"id": 77, "category_id": CAT, "segmentation": segmentation}
    with pytest.raises(PsaError) as excinfo:
        coco.rasterise(data, image, [ann])
    one_line_error(excinfo, "annotation 77", "e.jpg", message)


def test_convert_split_writes_sheet_and_masks(dataset: Path, tmp_path: Path) -> None:
    out_sheet, out_masks = tmp_path / "out" / "train2014.tsv", tmp_path / "out" / "masks"
    counts = coco.convert_split(
        annotation_file(dataset), dataset, coco.IMAGES_PATTERN, SPLIT, out_sheet, out_masks
    )
    assert counts == {
        "images": 3,
        "left_out": 1,
        "classes": 3,
        "masks": 3,
        "annotations": 6,
        "crowd": 2,
        "without_segmentation": 1,
    }
    masks = out_masks.resolve()
    assert out_sheet.read_text(encoding="utf-8").splitlines() == [
        "image\ttags\tsplit\tmask",
        f"train2014/a.jpg\tcat;dog\ttrain2014\t{masks / 'a.png'}",
        f"train2014/c.jpg\tdog;traffic light\ttrain2014\t{masks / 'c.png'}",
        f"train2014/d.jpg\tcat;traffic light\ttrain2014\t{masks / 'd.png'}",
    ]
    assert sorted(p.name for p in out_masks.iterdir()) == ["a.png", "c.png", "d.png"]
    for name, expected in expected_masks().items():
        np.testing.assert_array_equal(io.read_mask(out_masks / f"{name}.png"), expected)
    from PIL import Image

    with Image.open(out_masks / "a.png") as img:
        assert img.mode == "P"
    assert [p.name for p in out_sheet.parent.iterdir() if p.name.startswith(".")] == []


def test_convert_split_without_segmentations(tmp_path: Path) -> None:
    data = small_coco()
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
    source = write_coco(tmp_path / "coco" / "boxes.json", data)
    out_sheet, out_masks = tmp_path / "sheet.tsv", tmp_path / "masks"
    counts = coco.convert_split(
        source, tmp_path / "coco", "images/{split}", "val", out_sheet, out_masks
    )
    assert counts["masks"] == 0 and counts["images"] == 3
    rows = out_sheet.read_text().splitlines()
    assert rows[1] == "images/val/a.jpg\tcat;dog\tval\t"
    assert all(row.endswith("\t") for row in rows[1:])
    assert out_masks.is_dir() and not any(out_masks.iterdir())


def test_cached_split_listing_reused_and_refreshed(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, cache = annotation_file(dataset), tmp_path / "cache" / "listing.json"
    real = coco.split_listing
    assert coco.cached_split_listing(source, cache)[:2] == (["a", "c", "d"], True)
    stored = json.loads(cache.read_text())
    assert stored["size"] == source.stat().st_size
    assert stored["mtime_ns"] == source.stat().st_mtime_ns

    def not_called(path):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(coco, "split_listing", not_called)
    assert coco.cached_split_listing(source, cache)[:2] == (["a", "c", "d"], True)

    # Another content (another size): rebuilt.
    monkeypatch.setattr(coco, "split_listing", real)
    data = small_coco()
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 30]
    write_coco(source, data)
    assert coco.cached_split_listing(source, cache)[:2] == (["a", "d"], True)
    assert json.loads(cache.read_text())["names"] == ["a", "d"]

    # Same size, another mtime: rebuilt too.
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 40]
    data["annotations"].append({**data["annotations"][0], "image_id": 20})
    source.write_text(json.dumps(data))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert coco.cached_split_listing(source, cache)[0] == ["a", "b"]

    # An unreadable cache is rebuilt, not an error.
    cache.write_text("{broken")
    assert coco.cached_split_listing(source, cache)[0] == ["a", "b"]
    assert json.loads(cache.read_text())["names"] == ["a", "b"]


def test_load_coco_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(PsaError) as excinfo:
        coco.load_coco(missing)
    one_line_error(excinfo, str(missing), "not found", "dataset.coco_annotations")

    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(PsaError) as excinfo:
        coco.split_listing(bad)
    one_line_error(excinfo, str(bad), "not valid JSON")

    no_annotations = write_coco(tmp_path / "info.json", {"images": [], "categories": CATEGORIES})
    with pytest.raises(PsaError) as excinfo:
        coco.load_coco(no_annotations)
    one_line_error(excinfo, str(no_annotations), "no 'annotations' list")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("category_id", 5, "name a category that 'categories' lacks: annotation 2 (category_id 5)"),
        ("image_id", 99, "name an image that 'images' lacks: annotation 2 (image_id 99)"),
    ],
)
def test_unknown_ids(tmp_path: Path, field: str, value: int, message: str) -> None:
    data = small_coco()
    data["annotations"][1][field] = value
    source = write_coco(tmp_path / "ids.json", data)
    with pytest.raises(PsaError) as excinfo:
        coco.load_coco(source)
    one_line_error(excinfo, str(source), message, "remove them")


@pytest.mark.parametrize(
    ("file_name", "message"),
    [("a b.jpg", "hold whitespace: 'a b.jpg'"), ("a.png", "share a name")],
)
def test_bad_image_names(dataset: Path, tmp_path: Path, file_name: str, message: str) -> None:
    data = small_coco()
    data["images"][2]["file_name"] = file_name  # c.jpg
    source = write_coco(tmp_path / "names.json", data)
    with pytest.raises(PsaError) as excinfo:
        coco.split_listing(source)
    one_line_error(excinfo, str(source), message, "rename")
    with pytest.raises(PsaError) as excinfo:
        coco.convert_split(source, dataset, "{split}", SPLIT, tmp_path / "s.tsv", tmp_path / "m")
    one_line_error(excinfo, str(source), message)
    assert not (tmp_path / "s.tsv").exists() and not (tmp_path / "m").exists()


def test_convert_split_names_the_file_of_a_bad_annotation(dataset: Path, tmp_path: Path) -> None:
    data = small_coco()
    data["annotations"][3]["segmentation"]["counts"][0] += 1  # runs no longer add up
    source = write_coco(tmp_path / "rle.json", data)
    with pytest.raises(PsaError) as excinfo:
        coco.convert_split(source, dataset, "{split}", SPLIT, tmp_path / "s.tsv", tmp_path / "m")
    one_line_error(excinfo, str(source), "annotation 4 (image c.jpg)", "fix or remove")
    assert not (tmp_path / "m").exists()  # the masks folder is all or nothing


def test_images_pattern_with_another_placeholder() -> None:
    with pytest.raises(PsaError) as excinfo:
        coco.image_folder("{year}/{split}", SPLIT)
    one_line_error(excinfo, "dataset.coco_images", "{split}")


def test_coco_split_command(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out_sheet, out_masks = tmp_path / "results" / "sheet.tsv", tmp_path / "results" / "masks"
    args = [
        "coco-split",
        "--annotations", str(annotation_file(dataset)),
        "--root", str(dataset),
        "--images", "{split}",
        "--split", SPLIT,
        "--out-sheet", str(out_sheet),
        "--out-masks", str(out_masks),
    ]  # fmt: skip
    caplog.set_level(logging.INFO, logger="psa")
    result = psa_in_process(*args)
    assert result.returncode == 0, result.stderr
    assert "split train2014: 3 images listed, 1 left out (no annotation), 3 classes" in caplog.text
    assert len(out_sheet.read_text().splitlines()) == 4
    np.testing.assert_array_equal(io.read_mask(out_masks / "c.png"), expected_masks()["c"])

    broken = write_coco(tmp_path / "broken.json", {**small_coco(), "categories": []})
    args[2] = str(broken)
    result = psa_in_process(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"{broken}: 'categories' is empty" in result.stderr

    assert psa_in_process("coco-split", "--help").returncode == 0
