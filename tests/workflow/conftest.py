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
