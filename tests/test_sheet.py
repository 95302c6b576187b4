"""Sample sheets: the format, plan-time checks (`read_sheet`), job-time checks (`verify_rows`),
and one one-line error with its row and its fix for each bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from psa_core import io
from psa_core.data import listed_files, read_labels
from psa_core.data import sheet as sheet_module
from psa_core.data.sheet import (
    ROW_SCHEMA,
    Sheet,
    SheetRow,
    image_name,
    read_sheet,
    verify_rows,
)
from psa_core.errors import PsaError
from tests.cli_helpers import psa_in_process

WIDTH, HEIGHT = 20, 16


def write_sheet(folder: Path, text: str, name: str = "sheet.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(call: Callable[[], object], *fragments: str) -> str:
    """Run `call`, expect a PsaError of one line holding every fragment; return the message."""
    with pytest.raises(PsaError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write_image(path: Path, width: int = WIDTH, height: int = HEIGHT) -> Path:
    rng = np.random.default_rng(0)
    io.write_image(path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return path


def write_mask(path: Path, index: int = 1, width: int = WIDTH, height: int = HEIGHT) -> Path:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[4:10, 4:12] = index
    mask[0, :] = 255
    io.write_mask(path, mask)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An images folder: imgs/a.jpg, imgs/b.png, imgs/c.jpg, masks/a.png (cat = 2 of 3)."""
    root = tmp_path / "images"
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a.jpg", "b.png", "c.jpg"):
        write_image(root / "imgs" / name)
    write_mask(root / "masks" / "a.png", index=2)
    return root


# -- the format ----------------------------------------------------------------------------


def test_row_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(ROW_SCHEMA)
    assert ROW_SCHEMA["$schema"].endswith("2020-12/schema")
    assert set(ROW_SCHEMA["required"]) == {"image", "tags", "split"}


@pytest.mark.parametrize(
    "cell",
    ["", " ", "a.jpg", "a b.jpg", "dir/", "dir/a", "a\tb", "train", "val-2_x", "tr.ain", "é"],
)
def test_the_schema_shortcut_agrees_with_jsonschema(cell: str) -> None:
    # read_sheet skips jsonschema for rows that pass these plain checks: they must be exact
    rules = sheet_module._FAST_RULES
    assert rules is not None
    validator = jsonschema.Draft202012Validator(ROW_SCHEMA)
    for column, min_length, pattern in rules:
        row = {"image": "a.jpg", "tags": "cat", "split": "train", column: cell}
        fast = len(cell) >= min_length and (pattern is None or pattern.search(cell) is not None)
        assert fast == validator.is_valid(row), (column, cell)


@pytest.mark.parametrize(
    "image",
    [
        "a.jpg",
        "dir/a.b.jpg",
        ".hidden",
        "x.",
        "a..",
        "dir//a.png",
        "a/./b.jpg",
        "a/.",
        "..",
        "my dir/a.jpg",
    ],
)
def test_image_name_is_the_path_stem(image: str) -> None:
    assert image_name(image) == Path(image).stem


def test_csv_sheet_rows_classes_sorted_from_tags_and_no_image_read(tmp_path: Path) -> None:
    path = write_sheet(
        tmp_path,
        "image,tags,split,mask\n"
        "imgs/a.jpg, dog ; cat;dog ,train,masks/a.png\n"
        "\n"
        "my photos/b.b.png,person,train,\n"
        "imgs/c.jpg,,test\n",  # a short row: the mask cell is empty
    )
    sheet = read_sheet(path, used_splits=["train"])  # no image exists: plan time reads none
    assert isinstance(sheet, Sheet) and sheet.path == path
    assert sheet.classes == ("cat", "dog", "person")
    assert sheet.rows[0] == SheetRow(
        row=2, name="a", image="imgs/a.jpg", tags=("dog", "cat"), split="train", mask="masks/a.png"
    )
    assert [(r.row, r.name, r.tags, r.mask) for r in sheet.rows[1:]] == [
        (4, "b.b", ("person",), None),
        (5, "c", (), None),
    ]
    assert sheet.names("train") == ["a", "b.b"] and sheet.names("test") == ["c"]
    assert sheet.split_rows("train") == list(sheet.rows[:2]) and sheet.split_rows("val") == []
    assert sheet.has_masks("train") and not sheet.has_masks("test")


@pytest.mark.parametrize("name", ["sheet.tsv", "sheet.TXT"])
def test_tsv_with_bom_any_column_order_and_no_mask_column(tmp_path: Path, name: str) -> None:
    text = "\ufeff split \ttags\timage\n val\tcat\timgs/a.jpg\t\t\nval\tdog, cat\timgs/b.png\n"
    sheet = read_sheet(write_sheet(tmp_path, text, name), used_splits=["val"])
    assert [(r.name, r.tags, r.split, r.mask) for r in sheet.rows] == [
        ("a", ("cat",), "val", None),
        ("b", ("dog, cat",), "val", None),  # a comma is no separator in a TSV
    ]
    assert not sheet.has_masks("val")


def test_classes_from_config_set_the_label_order(tmp_path: Path, images: Path) -> None:
    path = write_sheet(tmp_path, "image,tags,split\nimgs/a.jpg,cat;person,train\n")
    from_sheet = read_sheet(path)
    from_config = read_sheet(path, classes=["person", "dog", "cat"])
    assert from_sheet.classes == ("cat", "person")
    assert from_config.classes == ("person", "dog", "cat")
    labels, _ = verify_rows(from_sheet, images, from_sheet.rows)
    assert labels["a"].tolist() == [1, 1]
    labels, _ = verify_rows(from_config, images, from_config.rows)
    assert labels["a"].tolist() == [1, 0, 1] and labels["a"].dtype == np.uint8


def test_verify_rows_masks_on_some_rows_absolute_paths_and_multi_hot(
    tmp_path: Path, images: Path
) -> None:
    elsewhere = write_image(tmp_path / "elsewhere" / "d.jpg")
    mask_d = write_mask(tmp_path / "elsewhere" / "d_mask.png", index=1)
    path = write_sheet(
        tmp_path,
        "image,tags,split,mask\n"
        "imgs/a.jpg,dog;cat,train,masks/a.png\n"
        "imgs/b.png,person,train,\n"
        f"{elsewhere},cat;cat,train,{mask_d}\n"
        "imgs/c.jpg,,holdout,\n",
    )
    sheet = read_sheet(path, classes=["cat", "dog", "person"], used_splits=["train"])
    labels, files = verify_rows(sheet, images, sheet.split_rows("train"))
    assert list(labels) == ["a", "b", "d"] == list(files)
    assert {n: v.tolist() for n, v in labels.items()} == {
        "a": [1, 1, 0],
        "b": [0, 0, 1],
        "d": [1, 0, 0],
    }
    assert files == {
        "a": (images / "imgs" / "a.jpg", images / "masks" / "a.png"),
        "b": (images / "imgs" / "b.png", None),
        "d": (elsewhere, mask_d),
    }
    labels, files = verify_rows(sheet, images, sheet.split_rows("holdout"))
    assert labels["c"].tolist() == [0, 0, 0] and files["c"][1] is None


# -- read_sheet errors ---------------------------------------------------------------------

HEAD = "image,tags,split\n"

# (id, sheet text, read_sheet keywords, fragments of the message)
SHEET_ERRORS = [
    ("header-only-blank", "\n \n", {}, ["empty sample sheet", "start it with the header"]),
    (
        "missing-column",
        "image,tags\na.jpg,cat\n",
        {},
        ["row 1", "missing column 'split'", "add it to the header"],
    ),
    (
        "unknown-column",
        "image,tags,split,masks\na.jpg,cat,train,m.png\n",
        {},
        ["row 1", "unknown column 'masks'", "did you mean 'mask'", "fix the header"],
    ),
    (
        "column-twice",
        "image,tags,split,tags\n",
        {},
        ["row 1", "column 'tags' appears twice", "remove one"],
    ),
    ("no-rows", HEAD, {}, ["no image rows", "add one row per image"]),
    (
        "empty-image",
        HEAD + "a.jpg,cat,train\n\n ,dog,train\n",
        {},
        ["row 4", "empty image cell", "write the image's path"],
    ),
    (
        "image-whitespace",
        HEAD + "dir/my photo.jpg,cat,train\n",
        {},
        ["row 2", "'dir/my photo.jpg' has whitespace", "rename the file without whitespace"],
    ),
    (
        "duplicate-image",
        HEAD + "imgs/a.jpg,cat,train\nb.jpg,cat,train\n./imgs/a.jpg,dog,val\n",
        {},
        ["row 4", "'./imgs/a.jpg' is also on row 2", "remove the duplicate row"],
    ),
    (
        "shared-stem",
        HEAD + "x/a.jpg,cat,train\ny/a.png,dog,train\n",
        {},
        ["row 3", "name 'a' of row 2's image 'x/a.jpg'", "rename one of the two files"],
    ),
    (
        "bad-split",
        HEAD + "a.jpg,cat,train set\n",
        {},
        ["row 2", "split 'train set' is not a split name", "rename the split"],
    ),
    ("empty-split", HEAD + "a.jpg,cat,\n", {}, ["row 2", "empty split cell", "write the split"]),
    (
        "unknown-class",
        HEAD + "a.jpg,cat,train\nb.jpg,dgo,test\n",
        {"classes": ["cat", "dog"]},
        ["row 3", "unknown class 'dgo'", "did you mean 'dog'", "add the class to dataset.classes"],
    ),
    (
        "background-tag",
        HEAD + "a.jpg,cat;Background,train\n",
        {},
        ["row 2", "tag 'Background' is implicit", "remove it from the tags"],
    ),
    (
        "empty-tags-used-split",
        HEAD + "a.jpg,cat,train\nb.jpg, ; ,train\n",
        {"used_splits": ["train"]},
        [
            "row 3",
            "no tags",
            "split 'train'",
            "write its classes separated by ';' or move the row to a split the run does not use",
        ],
    ),
    (
        "used-split-without-rows",
        HEAD + "a.jpg,cat,train\nb.jpg,dog,test\n",
        {"used_splits": ["train", "val"]},
        ["no row has split 'val'", "the sheet's splits: test, train", "fix the split name"],
    ),
    (
        "no-tags-no-classes",
        HEAD + "a.jpg,,test\n",
        {},
        ["no row has tags", "set dataset.classes"],
    ),
    (
        "extra-cells",
        HEAD + "a.jpg,cat,train,b.png\n",
        {},
        ["row 2", "4 cells but the header has 3 columns", "remove the extra cells"],
    ),
    (
        "open-quote",
        HEAD + 'a.jpg,"cat,train\n',
        {},
        ["row 2", "not a valid CSV line", "fix the quotes"],
    ),
]


@pytest.mark.parametrize(
    ("text", "kwargs", "fragments"),
    [case[1:] for case in SHEET_ERRORS],
    ids=[case[0] for case in SHEET_ERRORS],
)
def test_read_sheet_errors_are_one_line_with_row_and_fix(
    tmp_path: Path, text: str, kwargs: dict, fragments: list[str]
) -> None:
    path = write_sheet(tmp_path, text)
    one_line_error(lambda: read_sheet(path, **kwargs), f"{path}", *fragments)


def test_read_sheet_file_errors(tmp_path: Path) -> None:
    one_line_error(
        lambda: read_sheet(tmp_path / "nothing.csv"),
        "nothing.csv: sample sheet not found",
        "check the sheet's path",
    )
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"image,tags,split\ncaf\xe9.jpg,cat,train\n")
    one_line_error(lambda: read_sheet(latin), "latin.csv", "line 2", "save the file as UTF-8")
    xlsx = write_sheet(tmp_path, HEAD, "sheet.xlsx")
    one_line_error(lambda: read_sheet(xlsx), "sheet.xlsx", "name the file .csv")


def test_rows_of_unused_splits_may_have_no_tags_and_trailing_empty_cells_are_fine(
    tmp_path: Path,
) -> None:
    path = write_sheet(tmp_path, "image,tags,split,\na.jpg,cat,train,,\nb.jpg,,unlabelled\n")
    sheet = read_sheet(path, used_splits=["train"])
    assert [r.tags for r in sheet.rows] == [("cat",), ()]


# -- verify_rows errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        ("imgs/zz.jpg,cat,train,", ["row 2", "imgs/zz.jpg not found", "fix the image path"]),
        ("imgs/bad.jpg,cat,train,", ["row 2", "bad.jpg: cannot decode image", "replace it"]),
        (
            "imgs/a.jpg,cat,train,masks/zz.png",
            ["row 2", "mask", "zz.png not found", "empty the mask cell"],
        ),
        (
            "imgs/a.jpg,cat,train,masks/bad.png",
            ["row 2", "bad.png: cannot decode mask", "replace it"],
        ),
        (
            "imgs/a.jpg,cat,train,masks/small.png",
            ["row 2", "is 10x8 but image", f"is {WIDTH}x{HEIGHT}", "fix or replace the mask"],
        ),
        (
            "imgs/a.jpg,cat,train,masks/high.png",
            ["row 2", "mask holds class index 5 but only 3 classes", "or the mask"],
        ),
    ],
    ids=["image-missing", "image-corrupt", "mask-missing", "mask-corrupt", "mask-size", "index"],
)
def test_verify_rows_errors_are_one_line_with_row_and_fix(
    tmp_path: Path, images: Path, row: str, fragments: list[str]
) -> None:
    (images / "imgs" / "bad.jpg").write_bytes(b"not a jpeg")
    (images / "masks" / "bad.png").write_bytes(b"not a png")
    write_mask(images / "masks" / "small.png", width=10, height=8)
    write_mask(images / "masks" / "high.png", index=5)
    path = write_sheet(tmp_path, "image,tags,split,mask\n" + row + "\n")
    sheet = read_sheet(path, classes=["cat", "dog", "person"])
    one_line_error(lambda: verify_rows(sheet, images, sheet.rows), f"{path}", *fragments)


GOOD_ROWS = "imgs/a.jpg,cat,train,masks/a.png\nimgs/b.png,dog;cat,train,\n"


def psa_index(images: Path, sheet: Path, out: Path):
    """`psa index --sheet` of the train split, classes cat and dog, into `out`."""
    return psa_in_process(
        "index", "--root", str(images), "--sheet", str(sheet), "--split", "train",
        "--settings", '{"dataset": {"classes": ["cat", "dog"]}}',
        "--out-images", str(out / "images.txt"), "--out-labels", str(out / "labels.json"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        ("imgs/c.jpg,unicorn,train,", ("row 4", "unknown class 'unicorn'", "dataset.classes")),
        ("imgs/c.jpg,,train,", ("row 4", "no tags", "separated by ';'")),
        ("imgs/a.jpg,cat,train,", ("row 4", "also on row 2", "remove the duplicate")),
        ("imgs/gone.jpg,cat,train,", ("row 4", "not found", "fix the image path")),
        ("imgs/broken.jpg,cat,train,", ("row 4", "broken.jpg", "cannot decode")),
        ("imgs/c.jpg,cat,train,masks/small.png", ("row 4", "small.png", "fix or replace")),
        ("imgs/c.jpg,cat,train,masks/none.png", ("row 4", "none.png", "empty the mask cell")),
    ],
    ids=[
        "unknown-class",
        "empty-tags",
        "duplicate-image",
        "missing-image",
        "undecodable-image",
        "mask-wrong-size",
        "missing-mask",
    ],
)
def test_psa_index_stops_at_a_bad_row_and_writes_nothing(
    images: Path, tmp_path: Path, row: str, fragments: tuple[str, ...]
) -> None:
    """`psa index --sheet` (the index job of kind sheet and coco): one line naming the row
    and the fix, a failed exit, and neither output exists."""
    (images / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    write_mask(images / "masks" / "small.png", width=WIDTH // 2)
    sheet = write_sheet(tmp_path, "image,tags,split,mask\n" + GOOD_ROWS + row + "\n")
    out = tmp_path / "index"
    proc = psa_index(images, sheet, out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (out / "images.txt").exists() and not (out / "labels.json").exists()


def test_psa_index_of_a_sheet_lists_files_and_labels(images: Path, tmp_path: Path) -> None:
    """The index of a sheet: where each image and mask are, and the labels of its tags."""
    sheet = write_sheet(tmp_path, "image,tags,split,mask\n" + GOOD_ROWS)
    out = tmp_path / "index"
    proc = psa_index(images, sheet, out)
    assert proc.returncode == 0, proc.stderr
    files = listed_files(out / "images.txt", images)
    assert files["a"].image == images / "imgs/a.jpg" and files["a"].mask == images / "masks/a.png"
    assert files["b"].image == images / "imgs/b.png" and files["b"].mask is None
    classes, labels = read_labels(out / "labels.json")
    assert classes == ["cat", "dog"]
    assert {n: v.tolist() for n, v in labels.items()} == {"a": [1, 0], "b": [1, 1]}
