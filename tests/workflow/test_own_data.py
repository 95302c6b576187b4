"""The data users have, through the whole DAG: image-level tags without masks, a sample
sheet with masks on some images, a COCO-format dataset, and CAMs from another method."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from psa_core import io
from psa_core.data import (
    generate_synthetic,
    listed_files,
    read_classes,
    read_image_list,
    read_labels,
)
from psa_core.data.voc import annotation_path, labels_from_xml
from psa_core.evaluate import NO_GROUND_TRUTH
from tests.cli_helpers import psa_in_process
from tests.workflow.conftest import (
    RESULTS,
    TINY_CONFIG,
    FinishedRun,
    planned_jobs,
    run_snakemake,
    write_config,
)

EVALUATION_RULES = ("evaluate_cam", "evaluate_crf_labels", "evaluate_random_walk", "evaluate_seg")
TRAIN, VAL = 4, 4
"""A one-shard split each: these runs check what comes out, not the fan-out."""


def _dataset(root: Path) -> list[str]:
    """The tiny synthetic images in the VOC layout; returns the class names."""
    synthetic = TINY_CONFIG["synthetic"]
    generate_synthetic(
        root,
        num_train=TRAIN,
        num_val=VAL,
        image_size=tuple(synthetic["image_size"]),
        num_classes=synthetic["num_classes"],
        seed=synthetic["seed"],
    )
    return read_classes(root)


def _config(dataset: dict, **sections) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["dataset"] = {"shard_size": 4, "val_split": None, **dataset}
    config.update(sections)
    return config


def output(proc) -> str:
    return proc.stdout + proc.stderr


def _summary(results: Path) -> list[dict[str, str]]:
    with open(results / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_finished(results: Path, train_names: list[str]) -> None:
    """Pseudo masks for every training image, the model, and the summary are there."""
    masks = results / "pseudo_masks" / "SegmentationClassAug"
    assert sorted(p.stem for p in masks.glob("*.png")) == sorted(train_names)
    assert (results / "seg" / "model" / "model.json").is_file()
    assert (results / "summary.csv").is_file()


def test_voc_folder_without_masks_plans_every_stage_and_no_evaluation(tmp_path: Path) -> None:
    """A VOC-layout folder with tags (Annotations/) and no SegmentationClass/: the whole
    DAG is planned, no evaluation job. (The sheet test below runs such a DAG.)"""
    root = tmp_path / "data"
    _dataset(root)
    shutil.rmtree(root / "SegmentationClass")
    write_config(tmp_path, _config({"kind": "voc", "root": "data", "eval_splits": ["train"]}))
    plan = planned_jobs(run_snakemake(tmp_path, "-n", "--quiet", "rules").stdout)
    assert plan["train_seg"] == 1 and plan["export_masks"] == 1 and plan["summarize"] == 1
    assert not any(rule in plan for rule in EVALUATION_RULES), plan
    assert plan["walk_changes"] == 1, plan


def _sheet(root: Path, classes: list[str], with_mask: set[str]) -> Path:
    """A sample sheet of the VOC-layout images: tags from the annotations, a mask on the
    images of `with_mask` only."""
    lines = ["image\ttags\tsplit\tmask"]
    for split in ("train", "val"):
        for name in read_image_list(root, split):
            label = labels_from_xml(annotation_path(root, name), classes)
            tags = ";".join(c for c, present in zip(classes, label, strict=True) if present)
            mask = f"SegmentationClass/{name}.png" if name in with_mask else ""
            lines.append(f"JPEGImages/{name}.jpg\t{tags}\t{split}\t{mask}")
    sheet = root / "samples.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def test_sheet_with_masks_on_val_only_then_on_none(tmp_path: Path) -> None:
    """A sample sheet, masks on 3 of the 4 val images and on no training image: val is
    scored on those 3 and says so, train is not evaluated, and its gallery has no
    ground-truth column. Then the masks go from the sheet too: with no mask anywhere
    the DAG runs to the end, no evaluation job is planned, and the summary says there
    is no ground truth. (The training side, which never had masks, stays as it is:
    only val's rows changed.)"""
    root = tmp_path / "data"
    classes = _dataset(root)
    val_names = read_image_list(root, "val")
    _sheet(root, classes, with_mask=set(val_names[:3]))
    config = _config(
        {"kind": "sheet", "sheet": "data/samples.tsv", "eval_splits": ["train", "val"]}
    )
    write_config(tmp_path, config)

    plan = planned_jobs(output(run_snakemake(tmp_path)))  # what the run planned, and ran
    assert all(plan[rule] == 1 for rule in EVALUATION_RULES), plan  # val only
    assert plan["walk_changes"] == 1, plan  # train, which has no ground truth
    results = tmp_path / "results"
    _assert_finished(results, read_image_list(root, "train"))
    assert sorted(p.name for p in (results / "cam" / "eval").glob("*.json")) == ["val.json"]
    metrics = json.loads((results / "cam" / "eval" / "val.json").read_text())
    assert (metrics["num_images"], metrics["listed_images"]) == (3, 4)
    rows = _summary(results)
    assert (rows[0]["stage"], rows[0]["setting"]) == ("CAM classifier", "final train loss")
    assert rows[1]["split"] == "train" and rows[1]["note"] == NO_GROUND_TRUTH
    val_rows = [r for r in rows if r["split"] == "val"]
    assert len(val_rows) == 6 and all(r["miou"] for r in val_rows)
    assert all("scored on the 3 of 4 images with a mask" in r["note"] for r in val_rows)
    # the sheet's class order (sorted tags) is the order every artifact uses
    assert json.loads((results / "index/train/labels.json").read_text())["classes"] == sorted(
        classes
    )
    gallery_logs = results / "logs" / "gallery"
    train_log, val_log = ((gallery_logs / f"{s}.log").read_text() for s in ("train", "val"))
    assert "columns: image, CAM" in train_log and "ground truth" not in train_log, train_log
    assert "columns: image, ground truth, CAM" in val_log, val_log

    _sheet(root, classes, with_mask=set())  # no mask anywhere
    plan = planned_jobs(output(run_snakemake(tmp_path)))
    assert not any(rule in plan for rule in EVALUATION_RULES), plan
    assert "train_cam" not in plan and "train_seg" not in plan, plan  # train's rows unchanged
    _assert_finished(results, read_image_list(root, "train"))
    rows = _summary(results)
    assert [(r["split"], r["stage"]) for r in rows] == [
        ("train", "CAM classifier"),  # its final loss against a constant guess
        ("train", "all"),
        ("train", "random walk vs CAM"),
        ("val", "all"),
        ("val", "random walk vs CAM"),
    ]
    assert rows[1]["note"] == rows[3]["note"] == NO_GROUND_TRUTH
    # what the walk did to the CAMs, the guard of a run without ground truth
    for split, row in (("train", rows[2]), ("val", rows[4])):
        changes = json.loads((results / "rw" / "changes" / f"{split}.json").read_text())
        assert changes["num_images"] == 4 and set(changes["images"]) == set(
            read_image_list(root, split)
        )
        assert row["note"].startswith("the walk kept ") or "no foreground" in row["note"], row
    val_log = (gallery_logs / "val.log").read_text()
    assert "columns: image, CAM" in val_log and "ground truth" not in val_log, val_log


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("JPEGImages/extra.jpg\tunicorn\ttrain\t", "unknown class 'unicorn'"),
        ("JPEGImages/syn_000000.jpg\t{cls}\ttrain\t", "is also on row 2"),
    ],
    ids=["unknown-class", "duplicate-image"],
)
def test_bad_sheet_row_stops_the_plan_in_one_line(tmp_path: Path, row: str, message: str) -> None:
    """A bad row stops the run before any job, in one line naming the row; nothing is
    written. (Every kind of bad row, the file checks of the index job included:
    tests/test_sheet.py.)"""
    root = tmp_path / "data"
    classes = _dataset(root)
    sheet = _sheet(root, classes, with_mask=set())
    lines = sheet.read_text().splitlines()
    lines.insert(3, row.format(cls=classes[0]))
    sheet.write_text("\n".join(lines) + "\n")
    dataset = {"kind": "sheet", "sheet": "data/samples.tsv", "classes": classes}
    write_config(tmp_path, _config(dataset))

    proc = run_snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "row 4" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_external_cams_give_the_same_downstream_artifacts(
    finished_run: FinishedRun, tmp_path: Path
) -> None:
    """The shared run's own CAMs, exported to the external format and read back with
    cam.source external, give the same CAM shards, CRF labels and CAM scores; no CAM
    network is trained or run."""
    workdir = finished_run.workdir
    shards = sorted((workdir / RESULTS / "cam").glob("*/shard-*.h5"))
    exported = tmp_path / "exported"
    psa_in_process("export-cams", "--cams", *map(str, shards), "--out", str(exported))

    config = _shared_config(workdir)
    config["output_dir"] = str(tmp_path / "results")
    config["cam"]["source"] = "external"
    config["cam"]["external_dir"] = str(exported)
    config["affinity"]["init_weights"] = None
    config["segmentation"]["init_weights"] = None
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(workdir / config["dataset"]["root"])
    config["dataset"]["root"] = "data"
    write_config(work, config)

    plan = planned_jobs(run_snakemake(work, "-n", "--quiet", "rules").stdout)
    assert "train_cam" not in plan and "infer_cam" not in plan, plan
    assert plan["external_cams"] == len(shards), plan  # every shard of train and val

    shards = [s for s in shards if s.parent.name == "val"]  # val's jobs run: enough to compare
    crf = [f"crf/{s.parent.name}/{s.name}" for s in shards]
    targets = [str(tmp_path / "results" / t) for t in [*crf, "cam/eval/val.json"]]
    run_snakemake(work, *targets)
    original, imported = workdir / RESULTS, tmp_path / "results"
    for shard in shards:
        relative = shard.relative_to(original)
        a, _ = io.read_score_shard(shard)
        b, _ = io.read_score_shard(imported / relative)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name][1], b[name][1])
            np.testing.assert_array_equal(a[name][0], b[name][0])
    for relative in crf:
        with h5py.File(original / relative) as fa, h5py.File(imported / relative) as fb:
            assert sorted(fa) == sorted(fb)
            for name in fa:
                np.testing.assert_array_equal(fa[name][()], fb[name][()])
    a = json.loads((original / "cam/eval/val.json").read_text())
    b = json.loads((imported / "cam/eval/val.json").read_text())
    assert a["thresholds"] == b["thresholds"] and a["num_images"] == b["num_images"]


def _shared_config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "config.yaml").read_text())


def test_coco_dataset_is_converted_and_indexed(tmp_path: Path) -> None:
    """A small COCO-format dataset (tests/test_coco.py's drawn shapes): one coco_split job
    turns the split into a sheet and masks, the index reads them, and the whole DAG is
    planned on it, evaluation included (the split has segmentations)."""
    from tests.test_coco import SPLIT, expected_masks, small_coco, write_coco

    root = tmp_path / "coco"
    data = small_coco()
    write_coco(root / "annotations" / f"instances_{SPLIT}.json", data)
    rng = np.random.default_rng(0)
    for image in data["images"]:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        io.write_image(root / SPLIT / image["file_name"], pixels)
    dataset = {"kind": "coco", "root": "coco", "train_split": SPLIT, "eval_splits": [SPLIT]}
    write_config(tmp_path, _config(dataset))

    plan = planned_jobs(run_snakemake(tmp_path, "-n", "--quiet", "rules").stdout)
    assert plan["coco_split"] == 1 and all(plan[rule] == 1 for rule in EVALUATION_RULES), plan

    results = tmp_path / "results"
    run_snakemake(tmp_path, f"results/index/{SPLIT}/labels.json")
    classes, labels = read_labels(results / f"index/{SPLIT}/labels.json")
    assert classes == ["cat", "dog", "traffic light"]  # by category id: 3, 7, 11
    assert {name: label.tolist() for name, label in labels.items()} == {
        "a": [1, 1, 0],
        "c": [0, 1, 1],  # the crowd region counts
        "d": [1, 0, 1],  # so does a box without a segmentation
    }  # b.png has no annotation: left out
    files = listed_files(results / f"index/{SPLIT}/images.txt", root)
    for name, expected in expected_masks().items():
        assert files[name].image == root / SPLIT / f"{name}.jpg"
        np.testing.assert_array_equal(io.read_mask(files[name].mask), expected)
