"""Helpers for the workflow tests: real Snakemake runs in a temp folder.

The whole DAG runs once per session (`finished_run`, on `run_config()`): tests
that only read a finished run share it, tests that change a run work on a copy
of it (`run_copy`: every file keeps its modification time and Snakemake's
`.snakemake/` metadata comes along, so nothing reruns unless the test changes
something).

The shared run uses a dataset in the VOC layout inside the work folder (the
synthetic images, listed by hand), so that a test can append images to a
split's list as a user would. The held-out split `val` is evaluated but not
used for validation (`val_split: null`): as validation split, its images
would be an input of `train_cam`, and any change to them would rightly
retrain everything. The synthetic dataset rule has its own small test
(tests/workflow/test_workflow.py).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from psa_core.data import generate_synthetic

REPO = Path(__file__).resolve().parents[2]

SHARD_SIZE = 4
NUM_TRAIN = 8
"""Two training shards: the multi-shard paths (training and export on every shard) run."""
NUM_VAL = 4
"""The synthetic val split: one shard (the SLURM test lists its per-shard logs)."""

HOSTILE = "x 'q' $(touch MARK) `touch MARK` é"
"""In the shared run's folder names: a space, a quote, two command substitutions and a
non-ASCII letter. Every shell line quotes its values, so the run works and no MARK
file appears (tests/workflow/test_workflow.py)."""
DATA = f"data {HOSTILE}"
"""The shared run's dataset folder, relative to the work folder (a copied run keeps its
input paths)."""
RESULTS = f"results {HOSTILE}"
"""The shared run's output_dir, relative to the work folder."""
VAL_LISTED = SHARD_SIZE + SHARD_SIZE // 2
"""Images of the shared run's val.txt: shards 000 (full) and 001 (half full)."""
VAL_ADDED = SHARD_SIZE // 2 + 1
"""Images in the shared run's dataset that val.txt leaves out (a test appends them)."""

# A config small enough that the whole DAG runs in well under a minute on 2 cores;
# every per-shard stage still has two shards of train and, in the shared run, of val.
TINY_CONFIG = {
    "output_dir": "results",
    "device": "cpu",
    "seed": 0,
    "dataset": {"kind": "synthetic", "shard_size": SHARD_SIZE, "eval_splits": ["train", "val"]},
    "synthetic": {
        "seed": 1,
        "num_train": NUM_TRAIN,
        "num_val": NUM_VAL,
        "image_size": [48, 64],
        "num_classes": 2,
    },
    "model": {"backbone": "tiny"},
    "cam": {
        "batch_size": 4,
        "epochs": 1,
        "lr": 0.01,
        "crop_size": 48,
        "resize_long": [48, 64],
        "infer": {"scales": [1.0, 0.5]},
        "evaluate": {"thresholds": [0.1, 0.2, 0.3]},
    },
    "crf": {"iterations": 3},
    # 72 px = 9 x 9 stride-8 cells, the smallest crop that holds radius-5 pairs
    "affinity": {"batch_size": 4, "epochs": 1, "lr": 0.01, "crop_size": 72},
    "random_walk": {"logt": 4, "evaluate": {"alphas": [8, 16]}},
    "segmentation": {
        "batch_size": 4,
        "epochs": 1,
        "lr": 0.01,
        "dilation": 2,
        "crop_size": 48,
        "resize_long": [48, 64],
        "infer": {"scales": [1.0, 0.5]},
    },
    "report": {"gallery_size": 2},
}


ONE_THREAD_RULES = ("infer_cam", "random_walk", "evaluate_random_walk", "infer_seg")
"""Rules that ask for 2 threads and run one job per shard or split. On TINY_CONFIG's
images a job of theirs spends most of its 2 s starting up (`import torch`, one thread),
so the tests give them 1 thread each and Snakemake runs two at once on the 2 cores:
the shared run takes about 40 % less time. (A thread count is no rerun trigger;
Snakemake ignores a rule name it does not know here, so keep the names current.)"""


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The tests' Snakemake command line: the repository's Snakefile, `workdir` as working
    directory, 2 cores (the rules of `ONE_THREAD_RULES` at 1 thread)."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--set-threads",  # before another option: it takes every value up to one
        *(f"{rule}=1" for rule in ONE_THREAD_RULES),
        "--cores",
        "2",
        *args,
    ]


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `snakemake_command(workdir, *args)`; with `check`, fail on a non-zero exit."""
    cmd = snakemake_command(workdir, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-6000:]}"
        )
    return proc


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def tiny_workdir(tmp_path: Path) -> Path:
    write_config(tmp_path, TINY_CONFIG)
    return tmp_path


def run_config() -> dict:
    """TINY_CONFIG on the VOC-layout copy of the synthetic images (`make_dataset`), in
    folders with hostile names (`DATA`, `RESULTS`)."""
    config = copy.deepcopy(TINY_CONFIG)
    config["output_dir"] = RESULTS
    config["dataset"] = {
        "kind": "voc",
        "root": DATA,
        "classes": None,  # from <root>/classes.txt
        "train_split": "train",
        "val_split": None,
        "eval_splits": ["train", "val"],
        "shard_size": SHARD_SIZE,
    }
    return config


def make_dataset(root: Path) -> None:
    """The tiny synthetic images in the VOC layout, val.txt listing only the first VAL_LISTED."""
    synthetic = TINY_CONFIG["synthetic"]
    generate_synthetic(
        root,
        num_train=NUM_TRAIN,
        num_val=VAL_LISTED + VAL_ADDED,
        image_size=tuple(synthetic["image_size"]),
        num_classes=synthetic["num_classes"],
        seed=synthetic["seed"],
    )
    val_list = root / "ImageSets/Segmentation/val.txt"
    names = val_list.read_text().split()
    val_list.write_text("\n".join(names[:VAL_LISTED]) + "\n")


@dataclass(frozen=True)
class FinishedRun:
    """A work folder where `snakemake` ran the whole DAG on `run_config()`, and what it printed."""

    workdir: Path
    output: str


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """The whole DAG, run once per session. Read only: copy it (`run_copy`) to change it."""
    workdir = tmp_path_factory.mktemp("shared-run")
    make_dataset(workdir / DATA)
    write_config(workdir, run_config())
    proc = run_snakemake(workdir)
    return FinishedRun(workdir, proc.stdout + proc.stderr)


def copy_run(source: Path, dest: Path) -> Path:
    """A copy of a finished work folder that Snakemake sees as finished: every file keeps
    its modification time (copy2) and `.snakemake/` (metadata: params, code, inputs) comes
    along."""
    shutil.copytree(source, dest, symlinks=True)
    assert (dest / ".snakemake" / "metadata").is_dir(), dest
    return dest


@pytest.fixture
def run_copy(finished_run: FinishedRun, tmp_path: Path) -> Path:
    """A private copy of `finished_run`'s work folder, free to change."""
    return copy_run(finished_run.workdir, tmp_path / "run")


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> number of jobs from the first "Job stats" table Snakemake prints.

    A dry run (`-n`, `-n --quiet rules`) prints its plan as that table; an
    empty dict when there is none ("Nothing to be done").
    """
    table = re.search(r"^Job stats:\n.*?^-+\s+-+\n(.*?)^total\s+\d+", output, flags=re.M | re.S)
    if table is None:
        return {}
    rows = re.findall(r"^(\w+)\s+(\d+)\s*$", table.group(1), flags=re.M)
    return {rule: int(count) for rule, count in rows}


def job_list(output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job block Snakemake printed, planned or run.

    `wildcards` is Snakemake's own text, e.g. "split=val, shard=001", or ""
    for a job without wildcards.
    """
    jobs = []
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", output, flags=re.M):
        wildcards = re.search(r"^\s+wildcards: (.*)$", body, flags=re.M)
        jobs.append((rule, wildcards.group(1).strip() if wildcards else ""))
    return jobs


def pytest_collection_modifyitems(config, items):
    """Run the SLURM test last: it installs the SLURM client tools, and with them on
    PATH but no controller running, the SLURM executor plugin's start-up queries
    (`scontrol show config`) add seconds to every later `snakemake` call."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)
