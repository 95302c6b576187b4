"""Artifact I/O: atomic writes, HDF5 score shards, weights files, text lists, images and
masks of every PIL mode, the pixel limit."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psa_core import __version__, io
from psa_core.errors import PsaError


class NotAllowed:
    """An arbitrary pickled object, which no weights file of ours may hold."""


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    io.write_json(target, {"done": True})
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert io.read_json(target) == {"done": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_score_shard_round_trip_with_provenance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = {
        "a": (rng.random((2, 5, 7), dtype=np.float32), np.array([3, 0])),
        "b": (np.zeros((0, 4, 4), np.float32), np.array([], dtype=np.int64)),
    }
    path = tmp_path / "shard.h5"
    io.write_score_shard(path, scores, {"scales": [1.0, 0.5], "stage": "cam"}, dtype="float16")
    data, attrs = io.read_score_shard(path)
    assert attrs["psa_core_version"] == __version__ and attrs["stage"] == "cam"
    assert attrs["scales"] == "[1.0, 0.5]"
    np.testing.assert_allclose(data["a"][0], scores["a"][0], atol=1e-3)  # float16 storage
    assert data["a"][1].tolist() == [3, 0] and data["b"][0].shape == (0, 4, 4)


def test_weights_files_missing_corrupt_or_pickled(tmp_path: Path) -> None:
    with pytest.raises(PsaError, match="nothing.pt"):
        io.load_torch(tmp_path / "nothing.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(PsaError, match="bad.pt"):
        io.load_torch(tmp_path / "bad.pt")

    torch.save({"x": NotAllowed()}, tmp_path / "pickle.pt")  # weights_only=True refuses it
    with pytest.raises(PsaError, match="pickle.pt"):
        io.load_torch(tmp_path / "pickle.pt")
    io.save_torch(tmp_path / "ok.pt", {"w": torch.ones(2)})
    assert torch.equal(io.load_torch(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_atomic_dir_replaces_whole_and_keeps_the_old_one_on_failure(tmp_path) -> None:
    target = tmp_path / "maps"
    with io.atomic_dir(target) as folder:
        (folder / "a.png").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == ["a.png"]
    with pytest.raises(RuntimeError), io.atomic_dir(target) as folder:
        (folder / "b.png").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a.png"]  # untouched
    with io.atomic_dir(target) as folder:
        (folder / "c.png").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]  # no temporaries left


# -- text lists ------------------------------------------------------------------------


def test_read_lines_drops_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "images.txt"
    path.write_bytes("\ufeff2007_000001\r\n2007_000002\n".encode())  # as Windows Notepad saves
    assert io.read_lines(path) == ["2007_000001", "2007_000002"]


def test_read_lines_keeps_a_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("  potted plant \n\ncat\n")
    assert io.read_lines(path) == ["potted plant", "cat"]


def test_read_lines_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "images.txt"
    path.write_bytes(b"a\ncaf\xe9\n")  # Latin-1
    with pytest.raises(
        PsaError, match=r"images\.txt: not UTF-8 text \(byte 0xe9 on line 2\); save"
    ):
        io.read_lines(path)


# -- images: every PIL mode ------------------------------------------------------------

_PALETTE = [10, 20, 30, 200, 100, 50]  # entry 0, entry 1
_GREY16 = [0, 128, 129, 257, 32768, 65535]
_GREY16_AS_8 = [0, 0, 1, 1, 128, 255]  # round(v * 255 / 65535)


def _grey(values: list[int]) -> np.ndarray:
    """(1, N, 3) uint8: grey values replicated to RGB."""
    return np.repeat(np.array([values], np.uint8)[:, :, None], 3, axis=2)


def _palette_image(mode: str, pixels: list[int], alpha: list[int] | None = None) -> Image.Image:
    img = Image.new(mode, (len(pixels), 1))
    img.putpalette(_PALETTE)
    for x, index in enumerate(pixels):
        img.putpixel((x, 0), index if alpha is None else (index, alpha[x]))
    return img


def _sixteen_bit(mode: str, values: list[int]) -> Image.Image:
    order = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (len(values), 1), np.array(values, order).tobytes())


IMAGE_CASES = {
    # mode: (image, file format that keeps the mode, expected (1, N, 3) uint8)
    "1": (Image.fromarray(np.array([[False, True]])), "PNG", _grey([0, 255])),
    "L": (Image.fromarray(np.array([[0, 100, 255]], np.uint8)), "PNG", _grey([0, 100, 255])),
    "LA": (
        Image.fromarray(np.array([[[10, 0], [200, 255]]], np.uint8), mode="LA"),
        "PNG",
        _grey([10, 200]),  # alpha dropped, not blended: the transparent pixel keeps its 10
    ),
    "P": (_palette_image("P", [0, 1]), "PNG", np.array([[[10, 20, 30], [200, 100, 50]]])),
    "PA": (  # Pillow writes no PA PNG; TIFF keeps the mode
        _palette_image("PA", [0, 1], alpha=[0, 128]),
        "TIFF",
        np.array([[[10, 20, 30], [200, 100, 50]]]),
    ),
    "RGB": (
        Image.fromarray(np.array([[[1, 2, 3], [250, 251, 252]]], np.uint8)),
        "PNG",
        np.array([[[1, 2, 3], [250, 251, 252]]]),
    ),
    "RGBA": (
        Image.fromarray(np.array([[[1, 2, 3, 0], [250, 251, 252, 255]]], np.uint8)),
        "PNG",
        np.array([[[1, 2, 3], [250, 251, 252]]]),
    ),
    "CMYK": (  # white, red, black
        Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 255])),
        "TIFF",
        np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0]]]),
    ),
    "I;16": (_sixteen_bit("I;16", _GREY16), "PNG", _grey(_GREY16_AS_8)),
    "I;16B": (_sixteen_bit("I;16B", _GREY16), "TIFF", _grey(_GREY16_AS_8)),
    "I": (Image.fromarray(np.array([_GREY16], np.int32)), "TIFF", _grey(_GREY16_AS_8)),
}


@pytest.mark.parametrize("mode", list(IMAGE_CASES))
def test_read_image_every_mode_by_hand(tmp_path: Path, mode: str) -> None:
    img, fmt, expected = IMAGE_CASES[mode]
    path = tmp_path / f"image.{fmt.lower()}"
    img.save(path, format=fmt)
    with Image.open(path) as saved:
        assert saved.mode == mode  # the file kept the mode under test
    image = io.read_image(path)
    assert image.dtype == np.uint8 and image.shape == (1, expected.shape[1], 3)
    assert image.tolist() == expected.tolist()


@pytest.mark.parametrize("mode", ["I;16L", "I;16N"])
def test_sixteen_bit_variants_no_file_keeps(mode: str) -> None:
    """PNG and TIFF write these back as I;16, so the rule is checked on the open image."""
    img = _sixteen_bit(mode, _GREY16)
    assert img.mode == mode
    assert io.image_rgb(img, "x.png").tolist() == _grey(_GREY16_AS_8).tolist()


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[0, -1]], np.int32), r"mode I\) holds values -1\.\.0, outside the 16-bit"),
        (np.array([[0, 65536]], np.int32), r"mode I\) holds values 0\.\.65536, outside the 16-bit"),
        (np.array([[0.0, 0.5]], np.float32), r"\(mode F\) has no fixed value range"),
    ],
)
def test_read_image_refuses_what_has_no_8_bit_scale(tmp_path: Path, array, message) -> None:
    path = tmp_path / "odd.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(
        PsaError, match=rf"odd\.tif: .*{message}.*; convert the image to 8 or 16 bit"
    ):
        io.read_image(path)


# -- masks -----------------------------------------------------------------------------


MASK_CASES = {
    "P": (_palette_image("P", [0, 1]), "PNG", [0, 1]),
    "L": (Image.fromarray(np.array([[0, 5, 255]], np.uint8)), "PNG", [0, 5, 255]),
    "1": (Image.fromarray(np.array([[False, True]])), "PNG", [0, 1]),
    "I;16": (_sixteen_bit("I;16", [0, 20, 255]), "PNG", [0, 20, 255]),
    "I;16B": (_sixteen_bit("I;16B", [0, 20, 255]), "TIFF", [0, 20, 255]),
    "I": (Image.fromarray(np.array([[0, 20, 255]], np.int32)), "TIFF", [0, 20, 255]),
}


@pytest.mark.parametrize("mode", list(MASK_CASES))
def test_read_mask_class_indices_unscaled(tmp_path: Path, mode: str) -> None:
    img, fmt, expected = MASK_CASES[mode]
    path = tmp_path / f"mask.{fmt.lower()}"
    img.save(path, format=fmt)
    with Image.open(path) as saved:
        assert saved.mode == mode
    mask = io.read_mask(path)
    assert mask.dtype == np.uint8 and mask.tolist() == [expected]


MASK_REFUSED = {
    "RGB": (Image.new("RGB", (2, 1)), "PNG"),
    "RGBA": (Image.new("RGBA", (2, 1)), "PNG"),
    "LA": (Image.new("LA", (2, 1)), "PNG"),
    "PA": (_palette_image("PA", [0, 1], alpha=[255, 255]), "TIFF"),
    "CMYK": (Image.new("CMYK", (2, 1)), "TIFF"),
    "F": (Image.new("F", (2, 1)), "TIFF"),
}


@pytest.mark.parametrize("mode", list(MASK_REFUSED))
def test_read_mask_refuses_colour_alpha_and_float(tmp_path: Path, mode: str) -> None:
    img, fmt = MASK_REFUSED[mode]
    path = tmp_path / f"mask.{fmt.lower()}"
    img.save(path, format=fmt)
    fix = "save the mask as a palette or 8-bit grey PNG of class indices"
    with pytest.raises(PsaError, match=rf"mask\.{fmt.lower()}: mask has mode {mode}; {fix}$"):
        io.read_mask(path)


@pytest.mark.parametrize(
    ("img", "fmt", "value"),
    [
        (_sixteen_bit("I;16", [0, 256]), "PNG", 256),
        (Image.fromarray(np.array([[-1, 0]], np.int32)), "TIFF", -1),
    ],
)
def test_read_mask_refuses_values_beyond_8_bit(tmp_path: Path, img, fmt, value) -> None:
    path = tmp_path / f"mask.{fmt.lower()}"
    img.save(path, format=fmt)
    with pytest.raises(
        PsaError, match=rf"holds value {value}, not a class index in 0\.\.255; save"
    ):
        io.read_mask(path)


# -- the pixel limit -------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height 8-bit grey pixels and holds none (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_pixel_limit_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (4, 3)).save(path)
    io.write_mask(tmp_path / "mask.png", np.zeros((3, 4), np.uint8))
    monkeypatch.setenv("PSA_MAX_IMAGE_PIXELS", "11")
    expected = (
        r"small\.png: 4 x 3 = 12 pixels is over the limit of 11 \(a guard against decompression "
        r"bombs\); if the image is genuine, raise max_image_pixels in config\.yaml or "
        r"PSA_MAX_IMAGE_PIXELS$"
    )
    with pytest.raises(PsaError, match=expected):
        io.read_image(path)
    with pytest.raises(PsaError, match=r"mask\.png: 4 x 3 = 12 pixels is over the limit of 11"):
        io.read_mask(tmp_path / "mask.png")
    monkeypatch.setenv("PSA_MAX_IMAGE_PIXELS", "12")  # read again at every check
    assert io.read_image(path).shape == (3, 4, 3)
    assert io.read_mask(tmp_path / "mask.png").shape == (3, 4)


def test_pixel_limit_default_and_bad_values(monkeypatch) -> None:
    monkeypatch.delenv("PSA_MAX_IMAGE_PIXELS", raising=False)
    assert io.max_image_pixels() == io.MAX_IMAGE_PIXELS == 89_478_485
    monkeypatch.setenv("PSA_MAX_IMAGE_PIXELS", " ")
    assert io.max_image_pixels() == io.MAX_IMAGE_PIXELS
    for bad in ("lots", "0", "-5", "1e9"):
        monkeypatch.setenv("PSA_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(PsaError, match=rf"PSA_MAX_IMAGE_PIXELS='{bad}': not a whole number"):
            io.max_image_pixels()


def test_a_192_megapixel_header_gives_one_line_not_pils_bomb_error(
    tmp_path: Path, monkeypatch
) -> None:
    """The header alone (no pixels): over twice PIL's limit, PIL would raise its own error."""
    path = tmp_path / "huge.png"
    _png_header_only(path, 16_000, 12_000)
    monkeypatch.delenv("PSA_MAX_IMAGE_PIXELS", raising=False)
    with pytest.raises(PsaError, match=r"huge\.png: 16000 x 12000 = 192000000 pixels is over"):
        io.read_image(path)
    monkeypatch.setenv("PSA_MAX_IMAGE_PIXELS", "200000000")  # allowed: PIL's guard stays quiet
    with io.open_image(path) as img:  # (a decode would allocate 192 MB, and fail)
        assert img.size == (16_000, 12_000)


# -- a full disk, for real: a 256 KB tmpfs ---------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 256 KB file system (needs root and mount; skipped elsewhere)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_an_os_error_and_keeps_what_was_there(tiny_disk: Path) -> None:
    """HDF5 shards and torch files fill the disk: each is an OSError (ENOSPC) naming a
    file of that folder, no temporary is left, the finished file beside stays."""
    import errno

    import torch

    finished = tiny_disk / "finished.json"
    io.write_json(finished, {"kept": True})
    noise = np.random.default_rng(0).random((4, 256, 256))  # 1 MB as float32, gzip or not
    with pytest.raises(OSError) as shard_error:
        io.write_score_shard(tiny_disk / "s.h5", {"a": (noise, [0, 1, 2, 3])}, {}, "float32")
    with pytest.raises(OSError) as torch_error:
        io.save_torch(tiny_disk / "w.pt", {"w": torch.from_numpy(noise)})
    for error, name in ((shard_error.value, "s.h5"), (torch_error.value, "w.pt")):
        assert error.errno == errno.ENOSPC and error.filename == str(tiny_disk / name)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["finished.json"]
    assert io.read_json(finished) == {"kept": True}
