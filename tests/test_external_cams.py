"""CAMs of another method: the NAME.npz format (psa_core/cam_files.py), the converters of
the PSA reference's and IRN's pickled .npy files, and the drivers export-cams,
import-cams and external-cams run in process."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from psa_core import io
from psa_core.cam_files import (
    cams_for_image,
    checked_cams,
    convert_npy,
    read_cam_file,
    write_cam_file,
)
from psa_core.data import generate_synthetic, read_labels
from psa_core.errors import PsaError
from psa_core.models import build_model
from psa_core.transforms import resize
from tests.cli_helpers import psa_in_process

K = 4
PICKLE_REFUSED = r"is a pickle .*loading a pickle can run arbitrary code.*--allow-pickle only"


def _maps(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


def _npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


# -- the format ------------------------------------------------------------------------


def test_write_then_read_gives_the_maps_and_ids(tmp_path: Path) -> None:
    cams = _maps(2, 5, 7)
    write_cam_file(tmp_path / "a.npz", cams, [3, 1])
    read, ids = read_cam_file(tmp_path / "a.npz", K)
    np.testing.assert_array_equal(read, cams)
    np.testing.assert_array_equal(ids, [3, 1])
    assert read.dtype == np.float32 and ids.dtype == np.int64
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left
    write_cam_file(tmp_path / "half.npz", cams.astype(np.float16), [0, 2])  # kept as float16
    with np.load(tmp_path / "half.npz") as f:
        assert f["cams"].dtype == np.float16


def test_values_a_little_outside_the_range_are_clipped(tmp_path: Path) -> None:
    cams = np.array([[[1.0005, -0.0005]]], dtype=np.float32)
    read, _ = read_cam_file(_npz(tmp_path / "a.npz", cams=cams, class_ids=[0]), K)
    np.testing.assert_array_equal(read, [[[1.0, 0.0]]])


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Name → (a malformed CAM file, the pattern of its one-line error)."""
    ok_cams, ok_ids = _maps(2, 3, 3), np.array([0, 1])
    (tmp_path / "text.npz").write_text("not an archive\n")
    np.save(tmp_path / "plain.npy", ok_cams)
    np.save(tmp_path / "dict.npy", {"cams": ok_cams}, allow_pickle=True)
    (tmp_path / "truncated.npz").write_bytes(
        _npz(tmp_path / "whole.npz", cams=ok_cams, class_ids=ok_ids).read_bytes()[:50]
    )
    objects = np.empty(2, dtype=object)
    objects[:] = [ok_cams[0], ok_cams[1]]
    nan = ok_cams.copy()
    nan[0, 0, 0] = np.nan
    return {
        "missing": (tmp_path / "none.npz", r"none\.npz: CAM file not found; give every"),
        "text": (tmp_path / "text.npz", r"text\.npz: not a readable \.npz archive \(ValueError"),
        "npy": (tmp_path / "plain.npy", r"plain\.npy: holds a single array \(a \.npy file\)"),
        "pickle": (tmp_path / "dict.npy", r"dict\.npy: not a readable \.npz archive .*pickle"),
        "truncated": (tmp_path / "truncated.npz", r"truncated\.npz: not a readable \.npz"),
        "no ids": (
            _npz(tmp_path / "a.npz", cams=ok_cams),
            r"a\.npz: has no array 'class_ids' \(it holds \['cams'\]\)",
        ),
        "no cams": (_npz(tmp_path / "b.npz", maps=ok_cams, class_ids=ok_ids), "no array 'cams'"),
        "objects": (
            _npz(tmp_path / "c.npz", cams=objects, class_ids=ok_ids),
            r"c\.npz: holds pickled objects .*not plain arrays",
        ),
        "ndim": (
            _npz(tmp_path / "d.npz", cams=ok_cams[0], class_ids=ok_ids),
            r"d\.npz: 'cams' has shape \(3, 3\) \(2 axes\); store \(C, H, W\)",
        ),
        "ids ndim": (
            _npz(tmp_path / "e.npz", cams=ok_cams, class_ids=ok_ids[None]),
            r"e\.npz: 'class_ids' has shape \(1, 2\); store a 1-D array",
        ),
        "float ids": (
            _npz(tmp_path / "f.npz", cams=ok_cams, class_ids=[0.0, 1.0]),
            r"f\.npz: 'class_ids' has dtype float64; store 0-based class ids as integers",
        ),
        "text maps": (
            _npz(tmp_path / "g.npz", cams=np.array([[["x"]]]), class_ids=[0]),
            r"g\.npz: 'cams' has dtype <U1; store float maps",
        ),
        "count": (
            _npz(tmp_path / "h.npz", cams=ok_cams, class_ids=[0, 1, 2]),
            r"h\.npz: 2 maps but 3 class ids; give one id per map",
        ),
        "range": (
            _npz(tmp_path / "i.npz", cams=ok_cams, class_ids=[0, K]),
            rf"i\.npz: class id {K} is outside 0\.\.{K - 1}; ids are 0-based",
        ),
        "negative": (
            _npz(tmp_path / "j.npz", cams=ok_cams, class_ids=[-1, 0]),
            r"j\.npz: class id -1 is outside",
        ),
        "repeated": (
            _npz(tmp_path / "k.npz", cams=ok_cams, class_ids=[2, 2]),
            r"k\.npz: class id 2 is given twice",
        ),
        "nan": (
            _npz(tmp_path / "l.npz", cams=nan, class_ids=ok_ids),
            r"l\.npz: maps hold NaN or infinite values",
        ),
        "0..255": (
            _npz(tmp_path / "m.npz", cams=ok_cams * 255, class_ids=ok_ids),
            r"m\.npz: map values span .* outside \[0, 1\]; normalise each map",
        ),
        "slightly over": (
            _npz(tmp_path / "n.npz", cams=ok_cams + 1.01, class_ids=ok_ids),
            r"outside \[0, 1\]",
        ),
        "empty maps": (
            _npz(tmp_path / "o.npz", cams=np.zeros((1, 0, 4)), class_ids=[0]),
            r"o\.npz: maps of shape \(0, 4\) are empty",
        ),
    }


_BAD_CASES = [
    "missing", "text", "npy", "pickle", "truncated", "no ids", "no cams", "objects", "ndim",
    "ids ndim", "float ids", "text maps", "count", "range", "negative", "repeated", "nan",
    "0..255", "slightly over", "empty maps",
]  # fmt: skip


@pytest.mark.parametrize("case", _BAD_CASES)
def test_a_malformed_file_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    path, pattern = _bad_files(tmp_path)[case]
    with pytest.raises(PsaError, match=pattern) as err:
        read_cam_file(path, K)
    assert "\n" not in str(err.value)


def test_every_malformed_case_is_tested(tmp_path: Path) -> None:
    assert sorted(_bad_files(tmp_path)) == sorted(_BAD_CASES)


# -- one image's maps ------------------------------------------------------------------


def test_the_labelled_classes_are_kept_in_id_order() -> None:
    cams = _maps(3, 4, 6)
    label = np.array([0, 1, 0, 1], dtype=np.float32)  # classes 1 and 3
    maps, ids = cams_for_image(cams, np.array([3, 0, 1]), label, (4, 6), (8, 12), "f.npz")
    np.testing.assert_array_equal(ids, [1, 3])  # class 0 dropped, ascending
    np.testing.assert_array_equal(maps, cams[[2, 0]])  # as stored: the working size


def test_a_labelled_class_without_a_map_is_refused() -> None:
    label = np.array([0, 1, 1, 0], dtype=np.float32)
    with pytest.raises(PsaError, match=r"f\.npz: no map for class 'cat' \(id 2\), which the imag"):
        cams_for_image(
            _maps(1, 4, 6), np.array([1]), label, (4, 6), (4, 6), "f.npz", ["a", "b", "cat", "d"]
        )
    with pytest.raises(PsaError, match=r"no map for class id 2,.*the file has ids \[1\]"):
        cams_for_image(_maps(1, 4, 6), np.array([1]), label, (4, 6), (4, 6), "f.npz")


def test_maps_at_the_original_size_are_scaled_to_the_working_size() -> None:
    cams = _maps(2, 30, 40)
    label = np.array([1, 0, 1, 0], dtype=np.float32)
    maps, ids = cams_for_image(cams, np.array([0, 2]), label, (15, 20), (30, 40), "f.npz")
    assert maps.shape == (2, 15, 20) and maps.dtype == np.float32
    for c in range(2):  # what psa_core.transforms gives for each map, bilinear
        np.testing.assert_allclose(maps[c], resize(cams[c], (15, 20), "bilinear"), atol=1e-6)
    assert maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_array_equal(ids, [0, 2])


def test_maps_of_another_size_are_refused_naming_both() -> None:
    label = np.array([1, 0, 0, 0], dtype=np.float32)
    with pytest.raises(PsaError, match=r"f\.npz: maps are 10x5 \(WxH\) but the image is 40x30, "
                       r"processed at 20x15; save the maps at the image's size"):  # fmt: skip
        cams_for_image(_maps(1, 5, 10), np.array([0]), label, (15, 20), (30, 40), "f.npz")


# -- the reference codebases' .npy files ----------------------------------------------


def _psa_npy(path: Path, cams: np.ndarray, ids: list[int]) -> Path:
    """What jiwoon-ahn/psa infer_cls.py saves: {0-based class id: (H, W) map}."""
    np.save(path, {i: cams[n] for n, i in enumerate(ids)})
    return path


def _irn_npy(path: Path, cams: np.ndarray, ids: list[int], background: bool = False) -> Path:
    """What jiwoon-ahn/irn make_cam.py saves: keys (a tensor of 0-based ids), cam (a strided
    tensor), high_res (maps of the present classes only, no background)."""
    high_res = np.concatenate([np.full_like(cams[:1], 0.2), cams]) if background else cams
    keys = torch.tensor(ids)
    np.save(path, {"keys": keys, "cam": torch.from_numpy(cams[:, ::4, ::4].copy()),
                   "high_res": high_res})  # fmt: skip
    return path


@pytest.mark.parametrize("write", [_psa_npy, _irn_npy], ids=["psa", "irn"])
def test_a_pickled_npy_is_refused_without_the_flag(tmp_path: Path, write) -> None:
    path = write(tmp_path / "img.npy", _maps(2, 8, 8), [1, 3])
    fmt = "psa" if write is _psa_npy else "irn"
    with pytest.raises(PsaError, match=rf"img\.npy: {PICKLE_REFUSED}") as err:
        convert_npy(path, fmt, allow_pickle=False)
    assert "\n" not in str(err.value)


def test_a_pickle_s_code_never_runs_without_the_flag(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    path = tmp_path / "evil.npy"
    np.save(path, np.array(Payload(), dtype=object), allow_pickle=True)
    raw = tmp_path / "raw.npy"  # a bare pickle, no .npy header: numpy would unpickle it too
    raw.write_bytes(pickle.dumps(Payload()))
    for file in (path, raw):
        with pytest.raises(PsaError, match=PICKLE_REFUSED):
            convert_npy(file, "psa")
    assert not marker.exists()


def test_psa_reference_files_convert_with_the_flag(tmp_path: Path) -> None:
    cams = _maps(2, 6, 9)
    path = _psa_npy(tmp_path / "img.npy", cams[::-1], [3, 1])  # saved out of order
    maps, ids = convert_npy(path, "psa", allow_pickle=True)
    np.testing.assert_array_equal(ids, [1, 3])
    np.testing.assert_array_equal(maps, cams)


@pytest.mark.parametrize("background", [False, True], ids=["reference", "with background"])
def test_irn_files_convert_with_the_flag(tmp_path: Path, background: bool) -> None:
    cams = _maps(2, 6, 9)
    cams[0, 0, 0] = 1 + 1e-6  # rounding over 1 is clipped
    path = _irn_npy(tmp_path / "img.npy", cams, [2, 0], background)
    maps, ids = convert_npy(path, "irn", allow_pickle=True)
    np.testing.assert_array_equal(ids, [0, 2])
    np.testing.assert_array_equal(maps, np.clip(cams[[1, 0]], 0, 1))


@pytest.mark.parametrize(
    ("make", "fmt", "pattern"),
    [
        (lambda p: np.save(p, _maps(1, 2, 2)), "psa", r"holds a plain array of shape \(1, 2, 2\)"),
        (lambda p: np.save(p, {}), "psa", r"holds an empty dict, not the PSA reference's"),
        (lambda p: np.save(p, {"a": np.zeros((2, 2))}), "psa", r"keys \['a'\] are not class ids"),
        (lambda p: np.save(p, {0: np.zeros((2, 2))}), "irn", r"holds \['0'\], not IRN's dict"),
        (
            lambda p: np.save(p, {"keys": np.array([0]), "high_res": np.zeros((3, 2, 2))}),
            "irn",
            r"'high_res' has 3 maps for 1 keys; IRN stores one map per key",
        ),
        (lambda p: p.write_bytes(b""), "irn", r"empty file"),
        (lambda p: None, "irn", r"file not found"),
        (lambda p: np.save(p, {0: np.zeros((2, 2))}), "seam", r"format 'seam': use one of psa, ir"),
    ],
    ids=["plain", "empty dict", "psa keys", "irn keys", "irn count", "empty", "missing", "format"],
)
def test_a_wrong_npy_is_refused_in_one_line(tmp_path: Path, make, fmt: str, pattern: str) -> None:
    path = tmp_path / "img.npy"
    make(path)
    with pytest.raises(PsaError, match=pattern) as err:
        convert_npy(path, fmt, allow_pickle=True)
    assert "\n" not in str(err.value)


def test_checked_cams_without_a_class_count_only_wants_ids_of_zero_or_more() -> None:
    _, ids = checked_cams(_maps(1, 2, 2), [99], "f")
    assert ids.tolist() == [99]


# -- the drivers ----------------------------------------------------------------------


def _run(*args: str) -> None:
    result = psa_in_process(*args)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic set (sides 60..90, processed at max side 64), its index, and the CAM
    shard `psa infer-cam` writes with untrained tiny weights."""
    base = tmp_path_factory.mktemp("external")
    root = base / "data"
    generate_synthetic(root, num_train=4, num_val=0, image_size=(60, 90), num_classes=K, seed=1)
    paths = {"root": root, "images": base / "images.txt", "labels": base / "labels.json"}
    _run("index", "--root", str(root), "--split", "train", "--out-images", str(paths["images"]),
         "--out-labels", str(paths["labels"]))  # fmt: skip
    torch.manual_seed(0)
    io.save_torch(base / "cam.pt", build_model("tiny", "cam", K).state_dict())
    paths["shard"] = base / "cams.h5"
    _run("infer-cam", *_files(paths), "--weights", str(base / "cam.pt"), "--backbone", "tiny",
         "--scales", "1.0", "--device", "cpu", "--max-side", "64",
         "--out", str(paths["shard"]))  # fmt: skip
    return paths


def _files(paths: dict[str, Path]) -> list[str]:
    return [f"--{k}={paths[k]}" for k in ("root", "images", "labels")]


def test_export_then_external_gives_the_same_shard(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    _run("export-cams", "--cams", str(dataset["shard"]), "--out", str(tmp_path / "npz"))
    out = tmp_path / "again.h5"
    _run("external-cams", *_files(dataset), "--source", str(tmp_path / "npz"), "--max-side", "64",
         "--out", str(out))  # fmt: skip

    original, _ = io.read_score_shard(dataset["shard"])
    again, attrs = io.read_score_shard(out)
    assert sorted(again) == sorted(original) == list(read_labels(dataset["labels"])[1])
    assert sorted(p.stem for p in (tmp_path / "npz").iterdir()) == sorted(original)
    for name, (maps, ids) in original.items():
        np.testing.assert_array_equal(again[name][1], ids)
        np.testing.assert_array_equal(again[name][0], maps)  # float16 both ways: exact
        assert max(maps.shape[1:]) <= 64  # the working size
    classes, _ = read_labels(dataset["labels"])
    assert (attrs["stage"], attrs["source"]) == ("cam", "external")
    assert json.loads(attrs["classes"]) == classes
    assert attrs["external_dir"] == str(tmp_path / "npz") and attrs["max_side"] == 64


def test_import_then_external_scales_maps_of_the_image_size(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    """IRN-style files at the images' own size: refused without --allow-pickle, then
    converted, and scaled to the working size by external-cams."""
    _, labels = read_labels(dataset["labels"])
    names = list(labels)  # in list order
    source = tmp_path / "irn"
    source.mkdir()
    expected, scaled = {}, 0
    for i, name in enumerate(names):
        with io.open_image(dataset["root"] / "JPEGImages" / f"{name}.jpg") as img:
            width, height = img.size
        scaled += max(width, height) > 64
        ids = [int(c) for c in np.flatnonzero(labels[name])]
        other = [c for c in range(K) if c not in ids][:1]  # an extra class, to be dropped
        cams = _maps(len(ids) + len(other), height, width, seed=i)
        _irn_npy(source / f"{name}.npy", cams, ids + other)
        expected[name] = (cams[: len(ids)], ids)

    refused = psa_in_process("import-cams", "--format", "irn", "--source", str(source),
                             "--out", str(tmp_path / "npz"))  # fmt: skip
    assert refused.returncode == 2 and not (tmp_path / "npz").exists()
    assert refused.stderr.count("\n") == 1 and "loading a pickle can run arbitrary code" in (
        refused.stderr
    )
    _run("import-cams", "--format", "irn", "--source", str(source), "--out",
         str(tmp_path / "npz"), "--allow-pickle")  # fmt: skip
    out = tmp_path / "cams.h5"
    _run("external-cams", *_files(dataset), "--source", str(tmp_path / "npz"), "--max-side", "64",
         "--dtype", "float32", "--out", str(out))  # fmt: skip

    assert scaled  # some images are over the max side: their maps were scaled down
    shard, _ = io.read_score_shard(out)
    reference, _ = io.read_score_shard(dataset["shard"])
    for name, (cams, ids) in expected.items():
        maps, stored_ids = shard[name]
        np.testing.assert_array_equal(stored_ids, ids)
        assert maps.shape == reference[name][0].shape  # infer-cam's working size
        for c in range(len(ids)):
            want = resize(cams[c], maps.shape[1:], "bilinear")
            np.testing.assert_allclose(maps[c], np.clip(want, 0, 1), atol=1e-6)


def test_external_cams_names_the_first_missing_file(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "npz").mkdir()
    result = psa_in_process("external-cams", *_files(dataset), "--source", str(tmp_path / "npz"),
                            "--out", str(tmp_path / "x.h5"))  # fmt: skip
    first = next(iter(read_labels(dataset["labels"])[1]))
    assert result.returncode == 2 and not (tmp_path / "x.h5").exists()
    assert f"no CAM file for 4 listed image(s) (first: {first}.npz)" in result.stderr
    assert result.stderr.count("\n") == 1
