"""Real Snakemake runs of the workflow on a tiny synthetic configuration."""

from __future__ import annotations

import copy
import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from psa_core.data import listed_names
from tests.workflow.conftest import (
    DATA,
    HOSTILE,
    NUM_TRAIN,
    NUM_VAL,
    ONE_THREAD_RULES,
    REPO,
    RESULTS,
    SHARD_SIZE,
    TINY_CONFIG,
    VAL_LISTED,
    FinishedRun,
    planned_jobs,
    run_config,
    run_snakemake,
    write_config,
)


def test_the_tests_one_thread_rules_are_rules_that_ask_for_two() -> None:
    """`run_snakemake`'s --set-threads names (Snakemake ignores a name it does not know)."""
    rules = "".join(path.read_text() for path in sorted((REPO / "workflow/rules").glob("*.smk")))
    for rule in ONE_THREAD_RULES:
        match = re.search(rf"^\s*rule {rule}:\n(.*?)(^\s*rule |\Z)", rules, flags=re.M | re.S)
        assert match, f"no rule {rule} in workflow/rules"
        assert re.search(r"^\s+threads: 2$", match.group(1), flags=re.M), rule


def test_lint_is_clean(tiny_workdir: Path) -> None:
    proc = run_snakemake(tiny_workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_config_dry_run(tmp_path: Path) -> None:
    """The repository's own config.yaml gives a valid DAG of the whole chain."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    proc = run_snakemake(tmp_path, "-n", "--quiet", "rules")
    for rule in (
        "generate_synthetic",
        "index_split",
        "index_shard",
        "train_cam",
        "infer_cam",
        "evaluate_cam",
        "crf_labels",
        "evaluate_crf_labels",
        "train_affinity",
        "random_walk",
        "evaluate_random_walk",
        "export_masks",
        "summarize",
        "gallery",
        "train_seg",
        "package_seg_model",
        "infer_seg",
        "evaluate_seg",
    ):
        assert rule in proc.stdout, proc.stdout


def test_synthetic_dataset_is_generated_indexed_and_validates_train_cam(
    tiny_workdir: Path,
) -> None:
    """TINY_CONFIG's synthetic dataset (the default kind): `generate_synthetic` makes it,
    the index jobs read the generated folder, and its val split is train_cam's validation
    split. (The shared run uses the VOC layout; the SLURM test runs the synthetic chain
    up to the CAM evaluation.)"""
    targets = ["results/index/val/images.txt", "results/index/train/shard-001.txt"]
    proc = run_snakemake(tiny_workdir, *targets)
    assert sorted(jobs_run(proc.stdout + proc.stderr)) == [
        "generate_synthetic",
        "index_shard",
        "index_split",
    ]
    results = tiny_workdir / "results"
    generated = results / "synthetic/ImageSets/Segmentation"
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        assert len((generated / f"{split}.txt").read_text().split()) == count
    val_names = listed_names(results / "index/val/images.txt")
    assert val_names == (generated / "val.txt").read_text().split()
    train_names = (generated / "train.txt").read_text().split()
    shard = listed_names(results / "index/train/shard-001.txt")
    assert shard == train_names[SHARD_SIZE : 2 * SHARD_SIZE]
    proc = run_snakemake(tiny_workdir, "-n", "-p", "results/cam/weights.pt")
    assert "--val-images results/index/val/images.txt" in proc.stdout, proc.stdout


def jobs_run(stdout_and_err: str) -> list[str]:
    return re.findall(r"^(?:local)?rule (\w+):", stdout_and_err, flags=re.M)


@pytest.mark.slow  # the shared run
def test_full_run_artifacts(finished_run: FinishedRun) -> None:
    """What one run of the whole DAG leaves behind (the shared run)."""
    results = finished_run.workdir / RESULTS
    num_images = {"train": NUM_TRAIN, "val": VAL_LISTED}
    train_shards = -(-NUM_TRAIN // SHARD_SIZE)
    val_shards = -(-VAL_LISTED // SHARD_SIZE)
    assert train_shards >= 2 and val_shards >= 1
    for split in ("train", "val"):
        metrics = json.loads((results / f"cam/eval/{split}.json").read_text())
        assert 0.0 <= metrics["published_miou"] <= metrics["best_miou"] <= 1.0
        assert metrics["num_images"] == num_images[split]
        assert (results / f"cam/eval/{split}.csv").is_file()
        assert (results / f"cam/eval/{split}.svg").read_text().lstrip().startswith("<")
    shards = sorted((results / "cam/train").glob("shard-*.h5"))
    assert [s.name for s in shards] == [f"shard-{i:03d}.h5" for i in range(train_shards)]
    with h5py.File(shards[0]) as f:
        assert f.attrs["psa_core_version"]
        name = sorted(f)[0]
        cams = f[name][()]
        assert cams.ndim == 3 and np.all(cams >= 0) and np.all(cams <= 1.0 + 1e-3)
        assert len(f[name].attrs["class_ids"]) == cams.shape[0]
    assert (results / "cam/weights.pt").is_file()
    assert not (results / "cam/train_checkpoint.pt").exists()
    all_jobs = jobs_run(finished_run.output)
    assert all_jobs.count("infer_cam") == train_shards + val_shards
    assert all_jobs.count("crf_labels") == train_shards + val_shards
    for split in ("train", "val"):
        quality = json.loads((results / f"crf/eval/{split}.json").read_text())
        for key in ("fg_precision", "bg_precision", "uncertain_fraction", "miou"):
            assert quality[key] is None or 0.0 <= quality[key] <= 1.0, key
    with h5py.File(results / "crf/train/shard-000.h5") as f:
        assert f.attrs["stage"] == "crf_labels" and f.attrs["alpha_high"] == 32
        stack = f[name][()]
        assert stack.shape == (2, cams.shape[0] + 1, *cams.shape[1:])
    maps = sorted((results / "crf/train/label_maps/shard-000").glob("*.png"))
    assert len(maps) == SHARD_SIZE
    assert (results / "affinity/weights.pt").is_file()
    log_header = (results / "affinity/train_log.csv").read_text().splitlines()[0]
    for column in ("bg_loss", "fg_loss", "neg_loss", "bg_count", "fg_count", "neg_count"):
        assert column in log_header
    assert not (results / "affinity/train_checkpoint.pt").exists()

    # Random walk: masks, the exported VOC-style folder, evaluation, summary, gallery.
    exported = results / "pseudo_masks"
    listed = (exported / "ImageSets/Segmentation/train.txt").read_text().split()
    train_names = listed_names(results / "index/train/images.txt")
    assert listed == train_names
    for name in train_names:
        with Image.open(exported / "SegmentationClassAug" / f"{name}.png") as mask:
            assert mask.mode == "P" and mask.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
            with Image.open(exported / "JPEGImages" / f"{name}.jpg") as image:
                assert mask.size == image.size
    walk = json.loads((results / "rw/eval/train.json").read_text())
    assert walk["num_images"] == NUM_TRAIN and 0.0 <= walk["published_miou"] <= 1.0
    summary = list(csv.DictReader((results / "summary.csv").open()))
    stages = [(row["split"], row["stage"]) for row in summary]
    for split in ("train", "val"):
        for stage in ("CAM", "CRF labels", "random walk", "segmentation network"):
            assert (split, stage) in stages
    # first, the CAM classifier's final loss against a constant guess (no val split here)
    assert (summary[0]["split"], summary[0]["stage"]) == ("train", "CAM classifier")
    assert summary[0]["setting"] == "final train loss", summary[0]
    assert "a constant guess of the class frequencies" in summary[0]["note"], summary[0]
    train_cam_log = (results / "logs/train_cam.log").read_text()
    assert f"train-cam: {summary[0]['note']}" in train_cam_log, train_cam_log[-2000:]
    assert "pseudo_masks" in finished_run.output  # the closing message says where
    for split in ("train", "val"):
        with Image.open(results / f"report/gallery-{split}.png") as picture:
            assert picture.width > 500 and picture.height > 100

    # The segmentation network: a model folder, masks per shard, an evaluation.
    description = json.loads((results / "seg/model/model.json").read_text())
    assert description["classes"][0] == "background" and description["backbone"] == "tiny"
    assert description["settings"]["pipeline"]["random_walk"]["beta"] == 8
    seg = json.loads((results / "seg/eval/val.json").read_text())
    assert seg["num_images"] == VAL_LISTED and 0.0 <= seg["miou"] <= 1.0


@pytest.mark.slow  # the shared run
def test_hostile_folder_names_run_and_execute_nothing(finished_run: FinishedRun) -> None:
    """The shared run's dataset root and output_dir hold a space, a quote, `$(touch MARK)`,
    a backquoted `touch MARK` and a non-ASCII letter: every job ran on those paths (the
    summary exists) and neither command ran anywhere."""
    workdir = finished_run.workdir
    assert HOSTILE in DATA and HOSTILE in RESULTS and "$(touch MARK)" in HOSTILE
    assert (workdir / RESULTS / "summary.csv").is_file()
    assert (workdir / RESULTS / "seg/model/model.json").is_file()
    for folder in (workdir, workdir / DATA, workdir / RESULTS, REPO, Path.cwd()):
        assert not (folder / "MARK").exists(), folder
    assert not list(workdir.rglob("MARK")), "a shell line ran a command from a path"
    # The command Snakemake runs holds each path quoted as one shell word.
    proc = run_snakemake(workdir, "-n", "-p", "--forcerun", "summarize")
    assert shlex.quote(f"{RESULTS}/summary.csv") in proc.stdout, proc.stdout


@pytest.mark.slow  # the shared run
def test_psa_predict_gives_the_masks_of_infer_seg(
    finished_run: FinishedRun, tmp_path: Path
) -> None:
    """`psa predict` on a folder of new images gives infer_seg's masks."""
    results = finished_run.workdir / RESULTS
    val_names = listed_names(results / "index/val/images.txt")
    images = tmp_path / "new_images"
    images.mkdir()
    for name in val_names:
        shutil.copy(finished_run.workdir / DATA / f"JPEGImages/{name}.jpg", images)
    predicted = tmp_path / "predicted"
    subprocess.run(
        [sys.executable, "-m", "psa_core", "predict", "--model", str(results / "seg/model"),
         "--images", str(images), "--out", str(predicted), "--device", "cpu"],
        check=True, capture_output=True,
    )  # fmt: skip
    masks = sorted((results / "seg/val/masks").glob("shard-*/*.png"))
    assert sorted(p.stem for p in masks) == sorted(val_names)
    for path in masks:
        with Image.open(predicted / path.name) as mask, Image.open(path) as expected:
            assert mask.mode == "P"
            assert np.array_equal(np.asarray(mask), np.asarray(expected))


@pytest.mark.slow  # the shared run
def test_report_holds_the_gallery_and_the_plots(finished_run: FinishedRun, tmp_path: Path) -> None:
    report_zip = tmp_path / "report.zip"  # outside the shared work folder
    run_snakemake(finished_run.workdir, "--report", str(report_zip))
    with zipfile.ZipFile(report_zip) as report:
        files = report.namelist()
    for split in ("train", "val"):
        assert any(f.endswith(f"gallery-{split}.png") for f in files), files
    assert sum(f.endswith(".svg") for f in files) == 4  # CAM and walk sweeps per split
    assert any(f.endswith("summary.csv") for f in files)


@pytest.mark.slow
def test_incremental_rebuild(run_copy: Path) -> None:
    """On a copy of the shared run: a changed parameter plans what depends on it only
    (Snakemake's plan, `-n`; the model description is remade for real)."""
    results = run_copy / RESULTS
    num_shards = -(-NUM_TRAIN // SHARD_SIZE) + -(-VAL_LISTED // SHARD_SIZE)

    # (Nothing to do when nothing changed: tests/workflow/test_rebuild.py.)
    # An evaluation parameter reruns only the evaluations and the summary built on them.
    config = run_config()
    config["cam"]["evaluate"]["thresholds"] = [0.15, 0.25]
    write_config(run_copy, config)
    proc = run_snakemake(run_copy, "-n", "--quiet", "rules")
    assert planned_jobs(proc.stdout + proc.stderr) == {"evaluate_cam": 2, "summarize": 1, "all": 1}

    # New inference defaults of the segmentation network: a new model description and
    # new masks, no retraining (planned; the model description is made for real).
    config["segmentation"]["infer"]["scales"] = [1.0]
    write_config(run_copy, config)
    proc = run_snakemake(run_copy, "-n", "--quiet", "rules")
    planned = planned_jobs(proc.stdout + proc.stderr)
    assert "train_seg" not in planned and planned["package_seg_model"] == 1, planned
    assert planned["infer_seg"] == num_shards and "infer_cam" not in planned, planned
    proc = run_snakemake(run_copy, f"{RESULTS}/seg/model")
    assert jobs_run(proc.stdout + proc.stderr) == ["package_seg_model"]
    description = json.loads((results / "seg/model/model.json").read_text())
    assert description["inference"]["scales"] == [1.0]

    # An inference parameter reruns inference and what follows, not training: Snakemake's
    # plan (a real rerun of most of the DAG is what test_rebuild.py runs for a CRF change).
    config["cam"]["infer"]["scales"] = [1.0]
    write_config(run_copy, config)
    proc = run_snakemake(run_copy, "-n", "--quiet", "rules")
    planned = planned_jobs(proc.stdout + proc.stderr)
    assert "train_cam" not in planned and planned["infer_cam"] == num_shards, planned
    # (A CRF alpha or random-walk parameter: tests/workflow/test_rebuild.py.)

    # A new max_side (docs/design.md §1.8; the 96-160 px images are above 64): CAM
    # inference and everything after it (the segmentation inference too), not the CAM
    # training, whose random resize does not depend on it.
    config["cam"]["infer"]["scales"] = run_config()["cam"]["infer"]["scales"]
    config["dataset"]["max_side"] = 64
    write_config(run_copy, config)
    proc = run_snakemake(run_copy, "-n", "--quiet", "rules")
    planned = planned_jobs(proc.stdout + proc.stderr)
    assert "train_cam" not in planned and planned["infer_cam"] == num_shards, planned
    assert planned["infer_seg"] == num_shards and planned["package_seg_model"] == 1, planned


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"cam": {"lr": -1}}, "cam.lr"),
        ({"dataset": {"kind": "imagenet"}}, "dataset.kind"),
        ({"model": {"backbone": "resnet50"}}, "model.backbone"),
        ({"dataset": {"shard_size": 0}}, "dataset.shard_size"),
        ({"cam": {"batch_szie": 3}}, "cam"),
    ],
)
def test_bad_config_value_gives_one_line(tmp_path: Path, override: dict, key: str) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    for section, values in override.items():
        config[section].update(values)
    write_config(tmp_path, config)
    proc = run_snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"'{key}'" in lines[0] and "config.yaml" in lines[0]
    assert "Traceback" not in proc.stderr


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("segmentation.resize_long", [160, 96], "resize_long is [min, max]"),
        ("output_dir", "", "key 'output_dir': '' should be non-empty"),
        ("output_dir", ".", "key 'output_dir': '.' is the working folder"),
    ],
)
def test_config_refused_at_plan_time(tmp_path: Path, key: str, value, message: str) -> None:
    """Values that a job would only trip over hours later (or that would scatter the
    artifacts among the user's files) stop the plan, in one line."""
    config = copy.deepcopy(TINY_CONFIG)
    *parents, name = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[name] = value
    write_config(tmp_path, config)
    line = _one_line(run_snakemake(tmp_path, "-n", check=False))
    assert message in line and "config" in line
    assert not (tmp_path / "results").exists() and not (tmp_path / "index").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "config.yaml: is empty"), ("cam: {lr: [\n", "config.yaml, line 2, column 1: not valid")],
)
def test_broken_config_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    assert message in _one_line(run_snakemake(tmp_path, "-n", check=False))


def test_nested_config_override_on_the_command_line(tmp_path: Path) -> None:
    """Snakemake reads `--config 'cam={epochs: 3}'` as the string '3': it is read as the
    number the schema wants; a value that is none is named."""
    write_config(tmp_path, TINY_CONFIG)
    proc = run_snakemake(tmp_path, "-n", "-p", "--config", "cam={epochs: 3, lr: 0.05}")
    assert '"epochs": 3' in proc.stdout and '"lr": 0.05' in proc.stdout, proc.stdout
    proc = run_snakemake(tmp_path, "-n", "--config", "cam={epochs: three}", check=False)
    assert "key 'cam.epochs'" in _one_line(proc)


def test_unknown_split_gives_one_line(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["dataset"]["eval_splits"] = ["test"]
    write_config(tmp_path, config)
    proc = run_snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'test'" in lines[0], proc.stderr


def test_missing_voc_root_gives_one_line(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["dataset"] = {"kind": "voc", "root": str(tmp_path / "nowhere")}
    write_config(tmp_path, config)
    proc = run_snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nowhere" in lines[0], proc.stderr
