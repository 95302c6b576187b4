"""The affinity stage (docs/design.md §1.2, §1.3) as users and the rules run it:
`psa crf-labels`, `psa evaluate-crf-labels` and `psa train-affinity` through
the command line (in process; real subprocesses where a signal kills them), plus `CrfLabelQuality` by hand and `AffinityTrainDataset` in process.

The CAMs come from the ground truth, not a network (`tests/affinity_helpers.py`),
so the CRF stage is tested on its own.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psa_core import io
from psa_core.affinity import HIGH, LOW, AffinityTrainDataset, crf_label_map, pair_offsets
from psa_core.constants import IGNORE_INDEX, voc_palette
from psa_core.data import gt_mask_path, image_path, read_labels
from psa_core.evaluate import CrfLabelQuality
from tests.affinity_helpers import AffinityData, cam_scores, make_affinity_data, write_cam_shard
from tests.cli_helpers import psa_command
from tests.cli_helpers import psa_in_process as run_psa

ALPHA_LOW, ALPHA_HIGH = 6.0, 24.0  # not the defaults, so the stored attrs prove they were used
U = IGNORE_INDEX


def crf_args(data: AffinityData, cams: Path, out: Path, maps: Path, *extra: str) -> list[str]:
    return [
        "crf-labels", *data.data_args(), "--cams", str(cams),
        "--alpha-low", str(ALPHA_LOW), "--alpha-high", str(ALPHA_HIGH),
        "--out", str(out), "--out-maps", str(maps), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> AffinityData:
    """6 synthetic train images (3 classes), `psa index`, and a CAM shard made from the GT."""
    return make_affinity_data(tmp_path_factory.mktemp("affinity"))


@pytest.fixture(scope="module")
def crf_run(data: AffinityData) -> tuple[Path, Path]:
    """One successful `psa crf-labels --workers 1` on the CAM shard: (scores .h5, maps folder)."""
    out, maps = data.root.parent / "crf" / "shard-0.h5", data.root.parent / "crf" / "maps-0"
    proc = run_psa(*crf_args(data, data.cams, out, maps, "--workers", "1"))
    assert proc.returncode == 0, proc.stderr
    return out, maps


def snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file under `paths` (files or folders) → its bytes."""
    files = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file():
                files[str(file)] = file.read_bytes()
    return files


# -- crf-labels: the outputs -------------------------------------------------------


def test_crf_labels_writes_normalised_stacks_and_palette_label_maps(
    data: AffinityData, crf_run: tuple[Path, Path]
) -> None:
    out, maps = crf_run
    scores, attrs = io.read_score_shard(out)
    _, labels = read_labels(data.labels)
    assert sorted(scores) == sorted(data.names)
    assert json.loads(attrs["classes"]) == data.classes
    assert attrs["alpha_low"] == ALPHA_LOW and attrs["alpha_high"] == ALPHA_HIGH
    assert attrs["stage"] == "crf_labels"
    assert sorted(p.name for p in maps.iterdir()) == sorted(f"{n}.png" for n in data.names)

    for name in data.names:
        stack, class_ids = scores[name]
        height, width = io.read_image(image_path(data.root, name)).shape[:2]
        np.testing.assert_array_equal(class_ids, np.flatnonzero(labels[name] > 0))
        assert stack.shape == (2, len(class_ids) + 1, height, width)
        assert np.isfinite(stack).all() and stack.min() >= 0
        # marginals: each of the la / ha stacks sums to 1 per pixel (stored as float16)
        np.testing.assert_allclose(stack.sum(axis=1), 1.0, atol=1e-2)

        with Image.open(maps / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (width, height)
            assert png.getpalette() == voc_palette()
            label_map = np.asarray(png)
        allowed = {0, U, *(int(c) + 1 for c in class_ids)}
        assert set(np.unique(label_map).tolist()) <= allowed
        np.testing.assert_array_equal(
            label_map, crf_label_map(stack[LOW], stack[HIGH], class_ids), err_msg=name
        )
    # the maps are three-way on this data: some confident bg, fg and uncertain pixels
    values = np.concatenate([io.read_mask(p).ravel() for p in maps.iterdir()])
    assert (values == 0).any() and (values == U).any() and ((values > 0) & (values < U)).any()


def test_crf_labels_with_two_workers_gives_the_same_outputs(
    data: AffinityData, crf_run: tuple[Path, Path], tmp_path: Path
) -> None:
    out, maps = tmp_path / "crf.h5", tmp_path / "maps"
    proc = run_psa(*crf_args(data, data.cams, out, maps, "--workers", "2"))
    assert proc.returncode == 0, proc.stderr
    ours, _ = io.read_score_shard(out)
    theirs, _ = io.read_score_shard(crf_run[0])
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert np.array_equal(ours[name][0], theirs[name][0]), name
        assert np.array_equal(ours[name][1], theirs[name][1]), name
        assert (maps / f"{name}.png").read_bytes() == (crf_run[1] / f"{name}.png").read_bytes()


# -- crf-labels: bad input -----------------------------------------------------------


def _foreign_classes(data: AffinityData, folder: Path) -> tuple[AffinityData, Path]:
    cams = folder / "cams.h5"
    write_cam_shard(cams, cam_scores(data.root, data.labels), list(reversed(data.classes)))
    return data, cams


def _missing_image(data: AffinityData, folder: Path) -> tuple[AffinityData, Path]:
    root = folder / "data"
    shutil.copytree(data.root, root)
    cams = folder / "cams.h5"
    write_cam_shard(cams, cam_scores(root, data.labels), data.classes)
    image_path(root, data.names[3]).unlink()
    return AffinityData(root, data.images, data.labels, cams, data.names, data.classes), cams


def _corrupt_shard(data: AffinityData, folder: Path) -> tuple[AffinityData, Path]:
    cams = folder / "cams.h5"
    cams.write_bytes(b"this is not an HDF5 file\n" * 40)
    return data, cams


def _cams_one_pixel_wider(data: AffinityData, folder: Path) -> tuple[AffinityData, Path]:
    scores = cam_scores(data.root, data.labels)
    name = data.names[2]
    maps, class_ids = scores[name]
    scores[name] = (np.pad(maps, ((0, 0), (0, 0), (0, 1))), class_ids)
    cams = folder / "cams.h5"
    write_cam_shard(cams, scores, data.classes)
    return data, cams


def _unlisted_image(data: AffinityData, folder: Path) -> tuple[AffinityData, Path]:
    scores = cam_scores(data.root, data.labels)
    scores["syn_999999"] = scores[data.names[0]]
    cams = folder / "cams.h5"
    write_cam_shard(cams, scores, data.classes)
    return data, cams


@pytest.mark.parametrize(
    ("make_input", "named"),
    [
        (_foreign_classes, "cams.h5"),
        (_missing_image, "syn_000003.jpg"),
        (_corrupt_shard, "cams.h5"),
        (_cams_one_pixel_wider, "cams.h5"),
        (_unlisted_image, "cams.h5"),
    ],
    ids=["classes-differ", "image-missing", "corrupt-shard", "cams-wider", "unlisted-image"],
)
def test_crf_labels_bad_input_is_one_line_exit_2_and_no_output(
    data: AffinityData, tmp_path: Path, make_input, named: str
) -> None:
    bad_data, cams = make_input(data, tmp_path)
    out, maps = tmp_path / "out" / "crf.h5", tmp_path / "out" / "maps"
    proc = run_psa(*crf_args(bad_data, cams, out, maps, "--workers", "1"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("psa crf-labels: error: ") and named in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not maps.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- crf-labels: killed ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_and_kill_crf(
    data: AffinityData, out: Path, maps: Path, workers: int = 1, sig: int = signal.SIGTERM
) -> None:
    """Start a long `psa crf-labels`, send `sig` once the CRF runs, wait for it to die;
    its worker processes must die with it."""
    command = psa_command(*crf_args(data, data.cams, out, maps, "--workers", str(workers)))
    command += ["--iterations", "400"]  # ~1.5 s an image here, ~8 s the shard
    victim = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in victim.stderr:
            lines.append(line)
            if "worker(s)" in line:  # logged right before the CRF starts
                started.set()
        started.set()  # EOF: let the test see why

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(timeout=60), "no start line within 60 s"
        time.sleep(0.3)  # well inside the CRF of the first image
        assert victim.poll() is None, "crf-labels ended before the signal: " + "".join(lines)
        workers_seen = _children(victim.pid)
        assert len(workers_seen) >= (workers if workers > 1 else 0), workers_seen
        victim.send_signal(sig)
        expected = 128 + sig if sig == signal.SIGTERM else -sig  # SIGKILL: no handler runs
        assert victim.wait(timeout=60) == expected, "".join(lines)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers_seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers_seen), "worker processes outlived the job"
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        reader.join(timeout=10)


def _leftovers_are_hidden_temps(folder: Path, *targets: Path) -> None:
    for entry in folder.iterdir():
        if entry in targets:
            continue
        assert entry.name.startswith(".") and entry.name.endswith(".tmp"), entry


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_crf_labels_leaves_no_output_that_looks_complete(
    data: AffinityData, tmp_path: Path, workers: int
) -> None:
    out, maps = tmp_path / "crf.h5", tmp_path / "maps"
    _start_and_kill_crf(data, out, maps, workers)
    assert not out.exists() and not maps.exists()
    assert list(tmp_path.iterdir()) == []  # SIGTERM unwinds: no temporary file is left either


def test_killed_crf_labels_keeps_an_earlier_finished_output(
    data: AffinityData, crf_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """The outputs of an earlier successful run (the fixture's, copied to these targets)
    stay byte-identical when a later run to the same targets is killed."""
    out, maps = tmp_path / "crf.h5", tmp_path / "maps"
    shutil.copy2(crf_run[0], out)
    shutil.copytree(crf_run[1], maps)
    before = snapshot(out, maps)
    _start_and_kill_crf(data, out, maps)
    assert snapshot(out, maps) == before
    _leftovers_are_hidden_temps(tmp_path, out, maps)


def test_rerun_after_kill_9_removes_the_killed_jobs_temporaries(
    data: AffinityData, tmp_path: Path
) -> None:
    """`kill -9` runs no cleanup: the half-written label maps stay as a hidden temporary.
    The next run of the same job (holding its output lock) removes them."""
    out, maps = tmp_path / "crf.h5", tmp_path / "maps"
    _start_and_kill_crf(data, out, maps, sig=signal.SIGKILL)
    stale = sorted(p.name for p in tmp_path.iterdir())
    assert stale and all(name.startswith((".crf.h5.", ".maps.")) for name in stale), stale
    proc = run_psa(*crf_args(data, data.cams, out, maps, "--workers", "1"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crf.h5", "maps"]


# -- evaluate-crf-labels -----------------------------------------------------------------


def test_evaluate_crf_labels_writes_scores_in_unit_range(
    data: AffinityData, crf_run: tuple[Path, Path], tmp_path: Path
) -> None:
    out_json, out_csv = tmp_path / "eval" / "crf.json", tmp_path / "eval" / "crf.csv"
    proc = run_psa(
        "evaluate-crf-labels", *data.data_args(), "--crf", str(crf_run[0]),
        "--out-json", str(out_json), "--out-csv", str(out_csv),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    keys = ("fg_precision", "fg_recall", "bg_precision", "bg_recall", "uncertain_fraction", "miou")
    for key in keys:
        assert isinstance(result[key], float) and 0 <= result[key] <= 1, (key, result[key])
    assert len(result["per_class_iou"]) == len(data.classes) + 1
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in result["per_class_iou"])
    assert result["num_images"] == len(data.names)

    # the same numbers from the label-map PNGs the stage wrote, scored in process
    quality = CrfLabelQuality(len(data.classes) + 1)
    for name in data.names:
        quality.add(
            io.read_mask(crf_run[1] / f"{name}.png"), io.read_mask(gt_mask_path(data.root, name))
        )
    expected = quality.result()
    for key in (*keys, "pixels"):
        assert result[key] == pytest.approx(expected[key]), key

    rows = out_csv.read_text().splitlines()
    assert rows[0] == "metric,value"
    metrics = dict(row.split(",") for row in rows[1:])
    assert float(metrics["fg_precision"]) == pytest.approx(result["fg_precision"], abs=1e-6)
    assert float(metrics["miou_labelled"]) == pytest.approx(result["miou"], abs=1e-6)


def test_crf_label_quality_by_hand() -> None:
    gt = np.array(
        [
            [0, 0, 1, 1],
            [2, 2, U, 0],
        ],
        dtype=np.uint8,
    )
    label_map = np.array(
        [
            [0, U, 1, 2],
            [2, 0, 1, 0],
        ],
        dtype=np.uint8,
    )
    # Pixels (gt, label): (0,0) (0,U) (1,1) (1,2) / (2,2) (2,0) (U,1) (0,0).
    # GT 255 drops (U,1): 7 pixels count. Confusion, rows GT 0..2, columns 0, 1, 2, U:
    #   gt 0: [2, 0, 0, 1]   gt 1: [0, 1, 1, 0]   gt 2: [1, 0, 1, 0]
    quality = CrfLabelQuality(3)
    quality.add(label_map, gt)
    result = quality.result()
    np.testing.assert_array_equal(quality.conf, [[2, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0]])
    assert result["num_images"] == 1 and result["num_classes"] == 3
    assert result["pixels"] == 7
    # fg labels: column 1 has 1, column 2 has 2 → 3; right ones: conf[1,1] + conf[2,2] = 2
    assert result["fg_precision"] == pytest.approx(2 / 3)
    # GT fg pixels (rows 1, 2, uncertain column included): 4; labelled with their class: 2
    assert result["fg_recall"] == pytest.approx(2 / 4)
    # labelled bg: column 0 = 2 + 0 + 1 = 3, of them GT bg: 2
    assert result["bg_precision"] == pytest.approx(2 / 3)
    # GT bg: row 0 = 3 pixels (one uncertain), labelled bg: 2
    assert result["bg_recall"] == pytest.approx(2 / 3)
    # one of the 7 counted pixels is uncertain
    assert result["uncertain_fraction"] == pytest.approx(1 / 7)
    # IoU over the certain 3×3 block [[2,0,0],[0,1,1],[1,0,1]]:
    #   class 0: TP 2, FP 1 (gt 2 labelled 0), FN 0          → 2 / 3
    #   class 1: TP 1, FP 0, FN 1 (gt 1 labelled 2)          → 1 / 2
    #   class 2: TP 1, FP 1 (gt 1 labelled 2), FN 1 (gt 2 → 0) → 1 / 3
    #   mean: (2/3 + 1/2 + 1/3) / 3 = 1/2
    assert result["per_class_iou"] == pytest.approx([2 / 3, 1 / 2, 1 / 3])
    assert result["miou"] == pytest.approx(1 / 2)

    # a second, all-uncertain image only adds uncertain pixels: 1 + 8 of 7 + 8
    quality.add(np.full((2, 4), U, np.uint8), np.zeros((2, 4), np.uint8))
    assert quality.result()["uncertain_fraction"] == pytest.approx(9 / 15)
    assert quality.result()["bg_recall"] == pytest.approx(2 / 11)


# -- train-affinity: SIGTERM and resume -----------------------------------------------------

STEPS_PER_EPOCH = 3  # 6 images, batch 2
LOG_EVERY = 10  # psa_core.training's default; epoch ends log too


@pytest.mark.slow
def test_train_affinity_killed_by_sigterm_resumes_to_the_same_weights(
    data: AffinityData, crf_run: tuple[Path, Path], tmp_path: Path
) -> None:
    epochs = 12  # 36 steps; the signal comes at step ~6

    def command(out: Path) -> list[str]:
        return psa_command(
            "train-affinity", *data.data_args(), "--crf", str(crf_run[0]),
            "--backbone", "tiny", "--epochs", str(epochs), "--batch-size", "2",
            "--lr", "0.05", "--crop-size", "72", "--seed", "5", "--device", "cpu",
            "--threads", "1", "--checkpoint", str(out / "ckpt.pt"),
            "--out-log", str(out / "log.csv"), "--out", str(out / "weights.pt"),
        )  # fmt: skip

    out = tmp_path / "run"
    victim = subprocess.Popen(command(out), stderr=subprocess.PIPE, text=True)
    partial_log = out / "log.csv.partial"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if partial_log.is_file() and len(partial_log.read_text().splitlines()) >= 3:
            break  # header + two rows
        time.sleep(0.01)
    assert victim.poll() is None, "training ended before the signal: " + victim.stderr.read()
    victim.send_signal(signal.SIGTERM)
    stderr = victim.communicate(timeout=120)[1]
    assert victim.returncode == 128 + signal.SIGTERM, stderr
    assert (out / "ckpt.pt").is_file() and partial_log.is_file()
    assert not (out / "weights.pt").exists() and not (out / "log.csv").exists()

    resumed = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    reference = subprocess.run(
        command(tmp_path / "reference"), capture_output=True, text=True, timeout=300
    )
    assert reference.returncode == 0, reference.stderr
    assert "resuming from" not in reference.stderr

    ours = io.load_torch(out / "weights.pt")
    theirs = io.load_torch(tmp_path / "reference" / "weights.pt")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert not (out / "ckpt.pt").exists() and not partial_log.exists()

    header, *rows = (out / "log.csv").read_text().splitlines()
    columns = header.split(",")
    for part in ("bg_loss", "fg_loss", "neg_loss", "bg_count", "fg_count", "neg_count"):
        assert part in columns
    steps = [int(row.split(",")[0]) for row in rows]
    max_step = epochs * STEPS_PER_EPOCH
    expected = [s for s in range(1, max_step + 1) if s % LOG_EVERY == 0 or s % STEPS_PER_EPOCH == 0]
    assert steps == expected  # no repeated rows from the killed session, none missing
    reference_rows = (tmp_path / "reference" / "log.csv").read_text().splitlines()[1:]
    assert steps == [int(row.split(",")[0]) for row in reference_rows]


# -- AffinityTrainDataset in process ------------------------------------------------------


def test_affinity_train_dataset_items(data: AffinityData, crf_run: tuple[Path, Path]) -> None:
    from psa_core.models import build_model
    from psa_core.transforms import AffinityTrainTransform

    torch.set_num_threads(1)
    crop = 96  # a 12 × 12 grid: 8 rows × 4 columns of from-cells
    transform = AffinityTrainTransform(
        normalization=build_model("tiny", "affinity", len(data.classes)).normalization,
        crop_size=crop,
    )
    shards = dict.fromkeys(data.names, crf_run[0])
    dataset = AffinityTrainDataset(data.root, data.names, shards, transform, seed=7)
    assert len(dataset) == len(data.names)
    h = crop // 8
    n_from = (h - 4) * (h - 8)
    totals = dict.fromkeys(("bg_pos", "fg_pos", "neg"), 0.0)
    for epoch in range(2):
        for index in range(len(dataset)):
            item = dataset[(epoch, index)]
            image, *labels = item
            assert image.shape == (3, crop, crop) and image.dtype == torch.float32
            for label in labels:
                assert label.shape == (len(pair_offsets()), n_from) == (34, n_from)
                assert label.dtype == torch.float32
                assert set(torch.unique(label).tolist()) <= {0.0, 1.0}
            bg_pos, fg_pos, neg = labels
            assert (bg_pos + fg_pos + neg).max() <= 1  # the three kinds never overlap
            for key, label in zip(totals, labels, strict=True):
                totals[key] += float(label.sum())
            again = dataset[(epoch, index)]
            assert all(torch.equal(a, b) for a, b in zip(item, again, strict=True))
    assert all(v > 0 for v in totals.values()), totals
    # the key is the seed of the augmentation: another epoch gives another sample
    assert not torch.equal(dataset[(0, 0)][0], dataset[(1, 0)][0])


# -- train-affinity: bad input -----------------------------------------------------------


def _train_args(data: AffinityData, crf: Path, out: Path) -> list[str]:
    return [
        "train-affinity", *data.data_args(), "--crf", str(crf), "--backbone", "tiny",
        "--epochs", "1", "--batch-size", "2", "--crop-size", "72", "--device", "cpu",
        "--checkpoint", str(out / "ckpt.pt"), "--out-log", str(out / "log.csv"),
        "--out", str(out / "weights.pt"),
    ]  # fmt: skip


def _crf_with(crf: Path, folder: Path, **attrs) -> Path:
    """A copy of a CRF shard, its file attributes overridden or a stack widened."""
    import h5py

    path = folder / "crf.h5"
    shutil.copy2(crf, path)
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            if key == "widen":
                stack = f[value][()]
                ids = f[value].attrs["class_ids"]
                del f[value]
                f.create_dataset(value, data=np.concatenate([stack, stack[..., -1:]], axis=-1))
                f[value].attrs["class_ids"] = ids
            else:
                f.attrs[key] = value
    return path


@pytest.mark.parametrize("case", ["foreign_classes", "size_mismatch", "missing_weights"])
def test_train_affinity_bad_input_is_one_line(
    data: AffinityData, crf_run: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "foreign_classes":
        crf = _crf_with(crf_run[0], tmp_path, classes=json.dumps(["a", "b", "c"]))
    elif case == "size_mismatch":
        crf = _crf_with(
            crf_run[0], tmp_path, widen=sorted(io.read_score_shard_names(crf_run[0]))[0]
        )
    else:
        crf, extra = crf_run[0], ["--init", str(tmp_path / "nope.pt")]
    proc = run_psa(*_train_args(data, crf, out), *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("psa train-affinity: error:") and "Traceback" not in proc.stderr
    named = "nope.pt" if case == "missing_weights" else "crf.h5"
    assert named in lines[-1], lines[-1]
    assert not (out / "weights.pt").exists()
