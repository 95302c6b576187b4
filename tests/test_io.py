"""Artifact I/O: atomic writes, HDF5 score shards, weights files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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
