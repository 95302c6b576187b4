"""Sample sheets: a table of images with their image-level tags, split and optional mask.

A sheet describes a dataset that is not in the VOC layout (docs/design.md §1.7):
images anywhere, tags written by hand, masks for some images or none. This
docstring is the reference for the format.

File
    `.csv` is comma-separated; `.tsv` and `.txt` are tab-separated (chosen by
    the suffix, case-insensitive). UTF-8, a leading byte-order mark dropped.
    Cells follow the `csv` module's rules: a cell holding the delimiter, a
    quote or a line break is quoted ("a,b"). The first non-blank line is the
    header (normally line 1); blank lines (and lines whose cells are all
    empty) are skipped.

Columns (names matched after stripping whitespace, any order)
    ``image`` (required)
        Path of the image file, relative to the images folder (`root`) or
        absolute. Its *name*, ``Path(image).stem``, names every artifact of
        the image (score-shard keys, mask files): the file name must hold no
        whitespace and names must be unique across the whole sheet, so
        ``a/x.jpg`` and ``b/x.png`` cannot both appear.
    ``tags`` (required)
        Class names present in the image, separated by ``;``; whitespace
        around each is stripped, a repeated tag counts once. ``background``
        is implicit and refused. May be empty only on rows of splits the run
        neither trains nor evaluates on.
    ``split`` (required)
        Split name: letters, digits, ``_`` and ``-`` (``train``, ``val``,
        ``holdout-2``).
    ``mask`` (optional)
        Path of a ground-truth mask PNG, relative to `root` or absolute; an
        empty cell means no mask. Pixels: 0 background, 1..K the classes in
        label order, 255 void; same size as the image.

Any other column is an error (typo protection). Each row, as a dict of its
stripped cells, is validated against `ROW_SCHEMA` (JSON Schema draft 2020-12);
what a schema cannot say (duplicate names, unknown classes) is checked in code.

Rows are numbered by their line in the file (the header is line 1); every
message reads ``"{sheet}, row {N}: ..."`` and ends with the fix.

Classes (label order): `dataset.classes` when given; else every tag of the
sheet, sorted alphabetically. A user with masks and no `dataset.classes` must
then draw mask index c + 1 for the c-th class of that sorted list, or set
`dataset.classes` to the order the masks use.

`read_sheet` is the plan-time check (the sheet file only, never the images:
a sheet of 120k rows reads in well under 2 s); `verify_rows` is the job-time
check of the files of some rows and returns their labels and paths.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io as text_io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from psa_core import io
from psa_core.data import voc
from psa_core.data.index import read_classes, verified_pair
from psa_core.errors import PsaError

TAG_SEPARATOR = ";"
"""Separates the class names in a `tags` cell."""

DELIMITERS: dict[str, str] = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
"""Cell delimiter by (lower-case) file suffix."""

BACKGROUND_TAGS = frozenset({"background", "_background_", "__background__"})
"""Tags refused (compared lower-case): the background is implicit."""

ROW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sample sheet row",
    "description": "One row of a sample sheet, its cells stripped of surrounding whitespace.",
    "type": "object",
    "properties": {
        "image": {
            "description": "Image path, relative to the images folder or absolute; its file "
            "name is non-empty and holds no whitespace (the stem names the image).",
            "type": "string",
            "minLength": 1,
            "pattern": r"^(?:.*/)?[^/\s]+$",
        },
        "tags": {
            "description": "Class names separated by ';' (may be empty on splits the run "
            "does not use).",
            "type": "string",
        },
        "split": {
            "description": "Split name: letters, digits, '_' and '-'.",
            "type": "string",
            "minLength": 1,
            "pattern": r"^[A-Za-z0-9_-]+$",
        },
        "mask": {
            "description": "GT mask PNG, relative to the images folder or absolute; empty = "
            "no mask.",
            "type": "string",
        },
    },
    "required": ["image", "tags", "split"],
    "additionalProperties": False,
}

COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA["properties"])
REQUIRED_COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA["required"])

_VALIDATOR = jsonschema.Draft202012Validator(ROW_SCHEMA)
# Which schema error to report first within a cell: emptiness before the pattern.
_KEYWORD_ORDER = ("required", "additionalProperties", "type", "minLength", "pattern")


@dataclasses.dataclass(frozen=True)
class SheetRow:
    """One image of a sheet."""

    row: int
    """Line number in the file (the header is line 1)."""
    name: str
    """The image's stem: names every artifact of the image."""
    image: str
    """Image path as written in the sheet."""
    tags: tuple[str, ...]
    """Class names, deduplicated, in the sheet's order."""
    split: str
    mask: str | None
    """Mask path as written in the sheet; None for an empty cell or no mask column."""


@dataclasses.dataclass(frozen=True)
class Sheet:
    """A read and checked sample sheet (`read_sheet`)."""

    path: Path
    rows: tuple[SheetRow, ...]
    classes: tuple[str, ...]
    """Class names in label order (K of them)."""

    def split_rows(self, split: str) -> list[SheetRow]:
        """The rows of `split`, in file order."""
        return [r for r in self.rows if r.split == split]

    def names(self, split: str) -> list[str]:
        """The image names of `split`, in file order."""
        return [r.name for r in self.rows if r.split == split]

    def has_masks(self, split: str) -> bool:
        """Whether any row of `split` has a mask."""
        return any(r.mask is not None for r in self.rows if r.split == split)


# -- schema ---------------------------------------------------------------------------


def _fast_rules() -> tuple[tuple[str, int, re.Pattern | None], ...] | None:
    """(column, minLength, pattern) of each constrained column of `ROW_SCHEMA`, or None.

    jsonschema costs ~50 µs a row, seconds for a COCO-size sheet. A string
    cell passes the schema exactly when it passes these plain checks, so
    jsonschema runs only on a row that fails one, to decide and to word the
    error. A keyword without a plain equivalent here turns the shortcut off
    (None): every row then goes through jsonschema.
    """
    rules = []
    for column, spec in ROW_SCHEMA["properties"].items():
        if set(spec) - {"description", "type", "minLength", "pattern"} or spec["type"] != "string":
            return None
        if "minLength" in spec or "pattern" in spec:
            pattern = re.compile(spec["pattern"]) if "pattern" in spec else None
            rules.append((column, spec.get("minLength", 0), pattern))
    return tuple(rules)


_FAST_RULES = _fast_rules()


def _schema_message(error: jsonschema.ValidationError, values: Mapping[str, str]) -> str:
    """The message (without the sheet and row) for one schema error."""
    column = str(error.path[0]) if error.path else ""
    value = values.get(column, "")
    keyword = error.validator
    if column == "image" and keyword == "minLength":
        return (
            "empty image cell; write the image's path (relative to the images folder or absolute)"
        )
    if column == "image" and keyword == "pattern":
        return (
            f"image '{value}' has whitespace in its file name, or no file name (the name "
            "without suffix names the image's artifacts); rename the file without whitespace "
            "(e.g. my_photo.jpg) and fix the cell"
        )
    if column == "split" and keyword == "minLength":
        return "empty split cell; write the split name (e.g. train)"
    if column == "split" and keyword == "pattern":
        return (
            f"split '{value}' is not a split name (letters, digits, '_' and '-' only); "
            "rename the split (e.g. train, val)"
        )
    where = f"column '{column}'" if column else "row"
    return f"{where}: {error.message}; fix the cell"


def _schema_error(values: Mapping[str, str]) -> str | None:
    """The message for the first schema error of a row (in column order), or None."""
    errors = list(_VALIDATOR.iter_errors(dict(values)))
    if not errors:
        return None

    def order(error: jsonschema.ValidationError) -> tuple[int, int]:
        column = str(error.path[0]) if error.path else ""
        keyword = str(error.validator)
        return (
            COLUMNS.index(column) if column in COLUMNS else -1,
            _KEYWORD_ORDER.index(keyword) if keyword in _KEYWORD_ORDER else len(_KEYWORD_ORDER),
        )

    return _schema_message(min(errors, key=order), values)


def image_name(image: str) -> str:
    """The name of an image: `Path(image).stem`, without building a Path (~5 µs a row)."""
    base = image.rpartition("/")[2]
    if base in ("", "."):
        return Path(image).stem  # pathlib drops '.' components and trailing slashes
    dot = base.rfind(".")
    return base[:dot] if 0 < dot < len(base) - 1 else base


# -- reading --------------------------------------------------------------------------


def parse_tags(cell: str) -> tuple[str, ...]:
    """Class names of a `tags` cell: split on ';', stripped, empty pieces and repeats dropped."""
    return tuple(dict.fromkeys(filter(None, map(str.strip, cell.split(TAG_SEPARATOR)))))


def _header(cells: list[str], where: str) -> list[str]:
    """The stripped column names; PsaError for an unknown, repeated or missing column."""
    names = [c.strip() for c in cells]
    while names and not names[-1]:  # spreadsheets save trailing empty columns
        names.pop()
    layout = f"columns: {', '.join(REQUIRED_COLUMNS)} (required) and mask (optional)"
    for position, name in enumerate(names, start=1):
        if name not in COLUMNS:
            shown = f"'{name}'" if name else f"with no name (column {position})"
            close = difflib.get_close_matches(name.lower(), COLUMNS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PsaError(
                f"{where}: unknown column {shown}{hint}; {layout}: fix the header or "
                "remove the column"
            )
        if names.count(name) > 1:
            raise PsaError(f"{where}: column '{name}' appears twice; remove one")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise PsaError(
            f"{where}: missing column {', '.join(repr(c) for c in missing)}; {layout}: "
            "add it to the header"
        )
    return names


def _delimiter(path: Path) -> str:
    """The cell delimiter for the sheet's suffix; PsaError for another suffix."""
    delimiter = DELIMITERS.get(path.suffix.lower())
    if delimiter is None:
        raise PsaError(
            f"{path}: unknown sample sheet format '{path.suffix}'; name the file .csv "
            "(comma-separated) or .tsv / .txt (tab-separated)"
        )
    return delimiter


def _lines(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of each non-blank line; PsaError for a bad file."""
    if not path.is_file():
        raise PsaError(f"{path}: sample sheet not found; check the sheet's path in config.yaml")
    text = io.read_text(path)
    reader = csv.reader(text_io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    last = 0
    try:
        for cells in reader:
            start, last = last + 1, reader.line_num
            stripped = list(map(str.strip, cells))
            if any(stripped):
                yield start, stripped
    except csv.Error as exc:
        raise PsaError(
            f"{path}, row {last + 1}: not a valid {'CSV' if delimiter == ',' else 'TSV'} line "
            f'({exc}); fix the quotes (a cell holding a quote is written "a ""b""")'
        ) from None


def _tag_error(tags: Sequence[str], classes: Sequence[str] | None) -> str | None:
    """The message (no sheet, no row) for the first refused tag, or None."""
    for tag in tags:
        if tag.lower() in BACKGROUND_TAGS:
            return (
                f"tag '{tag}' is implicit (every pixel outside the tagged classes); remove it "
                "from the tags"
            )
        if classes is not None and tag not in classes:
            close = difflib.get_close_matches(tag, classes, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return (
                f"unknown class '{tag}'{hint}; fix the tag or add the class to dataset.classes "
                "in config.yaml"
            )
    return None


def read_sheet(
    path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    used_splits: Sequence[str] = (),
) -> Sheet:
    """Read and check a sample sheet (the format: module docstring).

    Plan-time checks only: reads the sheet file, never the images (a
    COCO-size sheet of 120k rows reads in well under 2 s; `verify_rows`
    checks the files).

    Args:
        path: the .csv / .tsv / .txt sheet.
        classes: class names in label order (dataset.classes); None or empty:
            every tag of the sheet, sorted alphabetically.
        used_splits: splits the run trains or evaluates on: each must have
            rows, and each of their rows must have tags.

    Returns:
        The sheet, rows in file order. PsaError (one line naming the sheet,
        the row where there is one, and the fix) at the first problem.
    """
    path = Path(path)
    delimiter = _delimiter(path)
    lines = _lines(path, delimiter)
    first = next(lines, None)
    if first is None:
        raise PsaError(
            f"{path}: empty sample sheet (no header line); start it with the header "
            f"{delimiter.join(COLUMNS)} and add one row per image"
        )
    header = _header(first[1], f"{path}, row {first[0]}")
    given = tuple(read_classes(path.parent, classes)) if classes else None
    used = frozenset(used_splits)
    width = len(header)
    at = {column: i for i, column in enumerate(header)}
    rules = [] if _FAST_RULES is None else [(at[c], n, p) for c, n, p in _FAST_RULES if c in at]
    i_image, i_tags, i_split, i_mask = at["image"], at["tags"], at["split"], at.get("mask")
    good_tags: set[str] = set()  # tags already checked by `_tag_error`

    rows: list[SheetRow] = []
    rows_by_name: dict[str, SheetRow] = {}
    for number, cells in lines:
        if len(cells) != width:
            if any(cells[width:]):
                raise PsaError(
                    f"{path}, row {number}: {len(cells)} cells but the header has {width} "
                    "columns; remove the extra cells (quote a cell that holds a "
                    f"{'comma' if delimiter == ',' else 'tab'})"
                )
            # Trailing empty cells, cut by an editor or added by a spreadsheet, are empty cells.
            del cells[width:]
            cells.extend([""] * (width - len(cells)))
        valid = _FAST_RULES is not None
        for i, min_length, pattern in rules:
            value = cells[i]
            if len(value) < min_length or (pattern is not None and pattern.search(value) is None):
                valid = False
                break
        if not valid:
            message = _schema_error(dict(zip(header, cells, strict=True)))
            if message is not None:
                raise PsaError(f"{path}, row {number}: {message}")

        image, split = cells[i_image], cells[i_split]
        tags = parse_tags(cells[i_tags])
        if not good_tags.issuperset(tags):
            message = _tag_error(tags, given)
            if message is not None:
                raise PsaError(f"{path}, row {number}: {message}")
            good_tags.update(tags)
        if not tags and split in used:
            raise PsaError(
                f"{path}, row {number}: no tags, but this run trains or evaluates on split "
                f"'{split}' (weak supervision needs each image's classes); write its classes "
                "separated by ';' or move the row to a split the run does not use"
            )

        name = image_name(image)
        other = rows_by_name.get(name)
        if other is not None:
            if os.path.normpath(image) == os.path.normpath(other.image):
                raise PsaError(
                    f"{path}, row {number}: image '{image}' is also on row {other.row}; "
                    "remove the duplicate row"
                )
            raise PsaError(
                f"{path}, row {number}: image '{image}' has the name '{name}' of row "
                f"{other.row}'s image '{other.image}' (the name without suffix names the "
                "image's artifacts); rename one of the two files and fix its row"
            )
        mask = (cells[i_mask] or None) if i_mask is not None else None
        row = SheetRow(row=number, name=name, image=image, tags=tags, split=split, mask=mask)
        rows_by_name[name] = row
        rows.append(row)

    if not rows:
        raise PsaError(f"{path}: no image rows after the header; add one row per image")
    splits = sorted({r.split for r in rows})
    for split in used_splits:
        if split not in splits:
            raise PsaError(
                f"{path}: no row has split '{split}' (the sheet's splits: {', '.join(splits)}); "
                "fix the split name in config.yaml or add rows with that split"
            )
    if given is None:
        given = tuple(sorted(good_tags))  # every tag of the sheet, all checked
        if not given:
            raise PsaError(
                f"{path}: no row has tags, so there are no classes; write each image's classes "
                "in the tags column or set dataset.classes in config.yaml"
            )
    return Sheet(path=path, rows=tuple(rows), classes=given)


# -- job-time checks ------------------------------------------------------------------


def _resolve(root: Path, cell: str) -> Path:
    path = Path(cell)
    return path if path.is_absolute() else root / path


def _labels(sheet: Sheet, row: SheetRow, index: Mapping[str, int]) -> np.ndarray:
    """(K,) uint8 multi-hot of a row's tags; `index` maps class name -> label position."""
    labels = np.zeros(len(sheet.classes), dtype=np.uint8)
    for tag in row.tags:
        if tag not in index:  # a row not read with these classes
            raise PsaError(
                f"{sheet.path}, row {row.row}: unknown class '{tag}'; fix the tag or add the "
                "class to dataset.classes in config.yaml"
            )
        labels[index[tag]] = 1
    return labels


def verify_rows(
    sheet: Sheet, root: str | os.PathLike, rows: Sequence[SheetRow]
) -> tuple[dict[str, np.ndarray], dict[str, tuple[Path, Path | None]]]:
    """Job-time checks of the given rows' files, and their labels and paths.

    Each image must exist and decode (`verified_pair`); a mask, when the
    row has one, must exist, decode (`io.read_mask`), have the image's size
    and hold only 0, 1..K and 255 (`voc.labels_from_mask`).

    Args:
        sheet: from `read_sheet`.
        root: the images folder; relative paths of the sheet are under it,
            absolute ones are kept.
        rows: the rows to check (e.g. one shard of a split).

    Returns:
        (name -> (K,) uint8 multi-hot from the tags, name -> (image path,
        mask path or None)), both in the order of `rows`. PsaError (one line:
        sheet, row, file, fix) at the first bad file.
    """
    root = Path(root)
    labels: dict[str, np.ndarray] = {}
    files: dict[str, tuple[Path, Path | None]] = {}
    index = {c: i for i, c in enumerate(sheet.classes)}
    for row in rows:
        where = f"{sheet.path}, row {row.row}"
        image = _resolve(root, row.image)
        if not image.is_file():
            raise PsaError(
                f"{where}: image {image} not found; fix the image path (a relative one is "
                f"under the images folder {root}) or add the file"
            )
        mask = None if row.mask is None else _resolve(root, row.mask)
        if mask is not None and not mask.is_file():
            raise PsaError(
                f"{where}: mask {mask} not found; fix the mask path (a relative one is "
                f"under the images folder {root}), add the file or empty the mask cell"
            )
        try:
            indices = verified_pair(image, mask)
            if indices is not None:
                voc.labels_from_mask(indices, len(sheet.classes), mask)
        except PsaError as exc:
            raise PsaError(f"{where}: {exc}") from None
        labels[row.name] = _labels(sheet, row, index)
        files[row.name] = (image, mask)
    return labels, files
