"""The `psa` command line as users and the rules run it: real subprocesses."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from psa_core import io
from psa_core.data import listed_names, write_labels
from psa_core.models import build_model
from tests.cli_helpers import psa, psa_in_process
from tests.train_helpers import NUM_CLASSES, write_dataset

CLASSES = [f"class{i}" for i in range(NUM_CLASSES)]


def test_help_lists_every_subcommand() -> None:
    proc = psa("--help")
    assert proc.returncode == 0
    for command in (
        "synth",
        "index",
        "train-cam",
        "infer-cam",
        "evaluate-cam",
        "crf-labels",
        "evaluate-crf-labels",
        "train-affinity",
        "random-walk",
        "train-seg",
        "package-seg-model",
        "infer-seg",
        "evaluate-seg",
        "predict",
    ):
        assert command in proc.stdout


def test_failed_index_is_one_line_and_keeps_earlier_artifacts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert psa("synth", "--out", str(root), "--num-train", "6", "--num-val", "2").returncode == 0
    labels = tmp_path / "index" / "labels.json"
    images = tmp_path / "index" / "images.txt"
    args = ["index", "--root", str(root), "--split", "train"]
    args += ["--out-images", str(images), "--out-labels", str(labels)]
    assert psa(*args).returncode == 0
    before = labels.read_bytes(), images.read_bytes()

    broken = root / "JPEGImages" / "syn_000003.jpg"
    broken.write_bytes(b"not a jpeg")
    proc = psa(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "syn_000003.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (labels.read_bytes(), images.read_bytes()) == before
    assert sorted(p.name for p in labels.parent.iterdir()) == ["images.txt", "labels.json"]


def test_index_of_one_shard(tmp_path: Path) -> None:
    """`psa index --shard N --shard-size S`: the names and labels of that shard only (the
    last one short), equal to the whole split's; a shard the list lacks is one line."""
    root = tmp_path / "data"
    assert psa("synth", "--out", str(root), "--num-train", "7", "--num-val", "2").returncode == 0

    def index(out: Path, *shard: str) -> subprocess.CompletedProcess:
        return psa(
            "index", "--root", str(root), "--split", "train", *shard,
            "--out-images", str(out / "images.txt"), "--out-labels", str(out / "labels.json"),
        )  # fmt: skip

    assert index(tmp_path / "whole").returncode == 0
    names = listed_names(tmp_path / "whole" / "images.txt")
    whole = json.loads((tmp_path / "whole" / "labels.json").read_text())
    for shard, expected in (("0", names[:3]), ("1", names[3:6]), ("2", names[6:])):
        out = tmp_path / f"shard-{shard}"
        proc = index(out, "--shard", shard, "--shard-size", "3")
        assert proc.returncode == 0, proc.stderr
        assert listed_names(out / "images.txt") == expected
        labels = json.loads((out / "labels.json").read_text())
        assert labels["classes"] == whole["classes"]
        assert labels["images"] == {name: whole["images"][name] for name in expected}
    assert len(expected) == 1  # the last shard holds the 7th image only

    bad = {
        ("--shard", "3", "--shard-size", "3"): "train.txt: shard 3 does not exist: 7 images",
        ("--shard", "0"): "--shard and --shard-size go together",
    }
    for shard, message in bad.items():
        out = tmp_path / "bad"
        proc = index(out, *shard)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()


def test_missing_weights_file_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    names, labels = write_dataset(root, n=2)
    write_labels(tmp_path / "labels.json", CLASSES, labels)
    (tmp_path / "images.txt").write_text("\n".join(names) + "\n")
    proc = psa(
        "infer-cam", "--root", str(root), "--images", str(tmp_path / "images.txt"),
        "--labels", str(tmp_path / "labels.json"), "--weights", str(tmp_path / "nope.pt"),
        "--shard", "0", "--shard-size", "2", "--device", "cpu", "--out", str(tmp_path / "s.h5"),
    )  # fmt: skip
    assert proc.returncode == 2 and "nope.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s.h5").exists()


# -- outputs: one job at a time, a killed run's leftovers, the system's errors ------------


def _index_args(root: Path, out: Path) -> list[str]:
    return [
        "index", "--root", str(root), "--split", "train",
        "--out-images", str(out / "images.txt"), "--out-labels", str(out / "labels.json"),
    ]  # fmt: skip


@pytest.fixture
def synth_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    proc = psa_in_process("synth", "--out", str(root), "--num-train", "4", "--num-val", "1")
    assert proc.returncode == 0, proc.stderr
    return root


def test_a_second_job_writing_the_same_output_stops_in_one_line(
    synth_root: Path, tmp_path: Path
) -> None:
    """While one job holds an output (here: this test, through the same lock), another
    `psa` process that would write it exits 2 at once and leaves it alone."""
    out = tmp_path / "index"
    assert psa_in_process(*_index_args(synth_root, out)).returncode == 0
    before = (out / "images.txt").read_bytes()
    with io.output_lock(out / "labels.json"):
        proc = psa(*_index_args(synth_root, out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "another psa job is writing it now" in proc.stderr
    assert str(out / "labels.json") in proc.stderr
    assert (out / "images.txt").read_bytes() == before
    assert psa(*_index_args(synth_root, out)).returncode == 0  # released: runs again
    assert sorted(p.name for p in out.iterdir()) == ["images.txt", "labels.json"]


def test_the_next_run_removes_what_a_killed_run_left(synth_root: Path, tmp_path: Path) -> None:
    """Temporaries of a killed writer (`kill -9` runs no cleanup) beside the job's outputs
    go when the job runs again; another output's temporaries stay."""
    out = tmp_path / "index"
    out.mkdir()
    (out / ".images.txt.k1ll3d_9.tmp").write_text("half a list")
    (out / ".labels.json.old.tmp").mkdir()
    (out / ".images.txt.extra.a1b2c3d4.tmp").write_text("another output's")
    assert psa_in_process(*_index_args(synth_root, out)).returncode == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".images.txt.extra.a1b2c3d4.tmp", "images.txt", "labels.json"]


def test_an_output_that_cannot_be_written_is_one_line(synth_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = psa_in_process(*_index_args(synth_root, blocker / "index"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(blocker) in proc.stderr and "Not a directory" in proc.stderr
    assert "fix the path" in proc.stderr
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        locked = tmp_path / "read_only"
        locked.mkdir(mode=0o555)
        proc = psa_in_process(*_index_args(synth_root, locked))
        assert proc.returncode == 1 and "Permission denied" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1


def test_a_full_disk_is_one_line_and_keeps_finished_outputs(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while a job writes (injected into every text write): one line naming the file
    and the fix, exit 1, the earlier outputs byte for byte, no temporary left."""
    out = tmp_path / "index"
    assert psa_in_process(*_index_args(synth_root, out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(self: Path, *args, **kwargs) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    proc = psa_in_process(*_index_args(synth_root, out))
    monkeypatch.undo()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "No space left on device" in proc.stderr and "free disk space" in proc.stderr
    assert str(out) in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_output_never_replaces_an_input(tmp_path: Path) -> None:
    """`--out` equal to an input file, a folder output over the dataset's masks, a file
    output that is a folder: refused in one line before anything is written."""
    root = tmp_path / "data"
    names, labels = write_dataset(root, n=2)
    write_labels(tmp_path / "labels.json", CLASSES, labels)
    (tmp_path / "images.txt").write_text("\n".join(names) + "\n")
    weights = tmp_path / "cam.pt"
    io.save_torch(weights, build_model("tiny", "cam", NUM_CLASSES).state_dict())
    before = {p: p.read_bytes() for p in (weights, tmp_path / "images.txt")}
    common = ["--root", str(root), "--images", str(tmp_path / "images.txt"),
              "--labels", str(tmp_path / "labels.json")]  # fmt: skip
    infer = ["infer-cam", *common, "--weights", str(weights), "--device", "cpu"]
    cases = {
        (*infer, "--out", str(weights)): "is also an input (--weights)",
        (*infer, "--out", str(tmp_path / "images.txt")): "is also an input (--images)",
        (*infer, "--out", str(root / "cams.h5")): "is inside the dataset folder",
        (*infer, "--out", str(tmp_path)): "holds the input",
    }
    for args, message in cases.items():
        proc = psa_in_process(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr, proc.stderr
    (tmp_path / "a_folder").mkdir()
    proc = psa_in_process(*infer, "--out", str(tmp_path / "a_folder"))
    assert proc.returncode == 2 and "a_folder: is a folder; give the path of a file" in proc.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert not list(tmp_path.rglob("*.h5"))
