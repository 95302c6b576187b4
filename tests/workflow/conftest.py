"""Helpers for the workflow tests: real Snakemake runs in a temp folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# A config small enough that the whole DAG runs in well under a minute on 2 cores.
TINY_CONFIG = {
    "output_dir": "results",
    "device": "cpu",
    "seed": 0,
    "dataset": {"kind": "synthetic", "shard_size": 8, "eval_splits": ["train", "val"]},
    "synthetic": {
        "seed": 1,
        "num_train": 16,
        "num_val": 8,
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
    "report": {"gallery_size": 3},
}


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile with `workdir` as working directory."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
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


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> number of jobs from the first "Job stats" table Snakemake prints.

    A dry run (`-n`, `-n --quiet rules`) prints its plan as that table; an
    empty dict when there is none ("Nothing to be done").
    """
    import re

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
    import re

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
