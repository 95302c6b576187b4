"""Incremental rebuilds: what Snakemake plans after a change, and what then runs.

Every case copies the session's finished run (tests/workflow/conftest.py: a
dataset in the VOC layout, with its `.snakemake/` metadata, so that Snakemake
sees parameter changes), changes one thing, reads Snakemake's plan from a dry
run and asserts it, then runs the workflow (to the end, or to a stage and then
plans the rest) and asserts that exactly the planned jobs ran and that the
artifacts upstream of the change kept their bytes and modification times.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from psa_core import io
from tests.workflow.conftest import (
    DATA,
    RESULTS,
    SHARD_SIZE,
    VAL_ADDED,
    job_list,
    planned_jobs,
    run_config,
    run_snakemake,
    write_config,
)

pytestmark = pytest.mark.slow  # reruns of parts of the shared run

NOOP_LIMIT_S = 15.0
"""A run with nothing to do must answer within this (a loaded 2-core box)."""

RANDOM_WALK_AND_AFTER = {
    "random_walk": 4,  # 2 train + 2 val shards
    "evaluate_random_walk": 2,
    "export_masks": 1,
    "train_seg": 1,
    "package_seg_model": 1,
    "infer_seg": 4,
    "evaluate_seg": 2,
    "gallery": 2,
    "summarize": 1,
    "all": 1,
}

CAM_STAGE = ("cam/weights.pt", "cam/*/shard-*.h5", "cam/eval/*.json", "index/*/*")
CRF_STAGE = ("crf/*/shard-*.h5", "crf/eval/*.json", "affinity/weights.pt")


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def plan(workdir: Path) -> dict[str, int]:
    """Snakemake's plan: rule -> number of jobs it would run now."""
    return planned_jobs(output(run_snakemake(workdir, "-n", "--quiet", "rules")))


def run_and_count(workdir: Path, *targets: str) -> dict[str, int]:
    """Run the workflow (to `targets`, or to the end); rule -> number of jobs that ran."""
    proc = run_snakemake(workdir, *targets)
    return dict(Counter(rule for rule, _ in job_list(output(proc))))


def stamps(workdir: Path, patterns: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(mtime in ns, size) of every file of the output folder matching `patterns`."""
    results = workdir / RESULTS
    files = sorted({p for pattern in patterns for p in results.glob(pattern) if p.is_file()})
    assert files, patterns
    return {str(p.relative_to(results)): (p.stat().st_mtime_ns, p.stat().st_size) for p in files}


def test_random_walk_beta_reruns_the_walk_and_what_follows_only(run_copy: Path) -> None:
    before = stamps(run_copy, CAM_STAGE + CRF_STAGE)
    config = run_config()
    config["random_walk"]["beta"] = 6
    write_config(run_copy, config)

    assert plan(run_copy) == RANDOM_WALK_AND_AFTER
    # The walk and the training of the segmentation network rerun for real, then the
    # plan holds exactly the rest (the segmentation inference reruns for real when
    # images are added, below).
    walk_and_training = {"random_walk": 4, "evaluate_random_walk": 2}
    walk_and_training |= {"export_masks": 1, "train_seg": 1}
    targets = [f"{RESULTS}/{path}" for path in ("seg/weights.pt", "rw/eval/train.json")]
    targets.append(f"{RESULTS}/rw/eval/val.json")
    assert run_and_count(run_copy, *targets) == walk_and_training
    assert stamps(run_copy, CAM_STAGE + CRF_STAGE) == before
    rest = {rule: n for rule, n in RANDOM_WALK_AND_AFTER.items() if rule not in walk_and_training}
    assert plan(run_copy) == rest


def test_crf_alpha_reruns_labels_affinity_and_walk_not_cams(run_copy: Path) -> None:
    before = stamps(run_copy, CAM_STAGE)
    config = run_config()
    config["crf"]["alpha_high"] = 24
    write_config(run_copy, config)

    crf_and_affinity = {"crf_labels": 4, "evaluate_crf_labels": 2, "train_affinity": 1}
    assert plan(run_copy) == crf_and_affinity | RANDOM_WALK_AND_AFTER
    # What follows the AffinityNet is the beta case's real rerun: here the CRF labels
    # and the AffinityNet run for real, then the plan holds exactly the rest.
    targets = [f"{RESULTS}/affinity/weights.pt"]
    targets += [f"{RESULTS}/crf/eval/{split}.json" for split in ("train", "val")]
    assert run_and_count(run_copy, *targets) == crf_and_affinity
    assert stamps(run_copy, CAM_STAGE) == before
    assert plan(run_copy) == RANDOM_WALK_AND_AFTER


def test_images_added_to_a_split_rerun_only_the_changed_shards(run_copy: Path) -> None:
    """Shard i holds list entries [4i, 4i + 4): appending the 3 unlisted names to val's 6
    changes shard 001 (2 -> 4 images) and makes shard 002 (1); shard 000 and the
    training split stay as they are."""
    root = run_copy / DATA
    listed = set((root / "ImageSets/Segmentation/train.txt").read_text().split())
    val_list = root / "ImageSets/Segmentation/val.txt"
    val = val_list.read_text().split()
    listed.update(val)
    held_back = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg") if p.stem not in listed)
    assert len(held_back) == VAL_ADDED
    val_list.write_text("\n".join(val + held_back) + "\n")
    untouched = ("cam/weights.pt", "cam/train/*.h5", "cam/val/shard-000.h5", "crf/train/*.h5")
    untouched += ("crf/val/shard-000.h5", "rw/train/*.h5", "rw/val/*-000.h5", "affinity/*.pt")
    untouched += ("index/train/*", "index/val/shard-000.*", "seg/weights.pt", "seg/model/*")
    untouched += ("seg/train/masks/*/*.png", "seg/val/masks/shard-000/*.png")
    before = stamps(run_copy, untouched)

    changed = [f"split=val, shard={shard}" for shard in ("001", "002")]
    expected = Counter(
        [("index_split", "split=val")]
        + [
            (rule, shard)
            for rule in ("index_shard", "infer_cam", "crf_labels", "random_walk", "infer_seg")
            for shard in changed
        ]
        + [
            (rule, "split=val")
            for rule in ("evaluate_cam", "evaluate_crf_labels", "evaluate_random_walk")
            + ("evaluate_seg", "gallery")
        ]
        + [("summarize", ""), ("all", "")]
    )

    def check(jobs: list[tuple[str, str]]) -> None:
        assert not [job for job in jobs if "split=train" in job[1] or "shard=000" in job[1]]
        assert Counter(jobs) == expected, jobs

    check(job_list(output(run_snakemake(run_copy, "-n"))))  # the plan
    check(job_list(output(run_snakemake(run_copy))))  # what ran
    assert stamps(run_copy, untouched) == before
    results, val = run_copy / RESULTS, val + held_back
    for i, shard in enumerate(("000", "001", "002")):
        held = io.read_score_shard_names(results / f"cam/val/shard-{shard}.h5")
        assert sorted(held) == sorted(val[i * SHARD_SIZE : (i + 1) * SHARD_SIZE]), shard
    for stage in ("cam", "rw", "seg"):
        metrics = json.loads((results / f"{stage}/eval/val.json").read_text())
        assert metrics["num_images"] == len(val), stage


def test_nothing_changed_nothing_runs_and_says_so_quickly(run_copy: Path) -> None:
    proc = run_snakemake(run_copy, "-n")
    assert planned_jobs(output(proc)) == {}
    assert "Nothing to be done" in output(proc)

    start = time.perf_counter()
    proc = run_snakemake(run_copy)
    seconds = time.perf_counter() - start
    assert job_list(output(proc)) == []
    assert "Nothing to be done" in output(proc)
    assert seconds < NOOP_LIMIT_S, f"a no-op run took {seconds:.1f} s"
