"""Fixtures for tests/data: a small hand-written VOC tree and a small synthetic dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from psa_core import io
from psa_core.data.synthetic import generate
from tests.data.helpers import (
    AUG_ONLY,
    AUG_ONLY_INDICES,
    SYNTH_PARAMS,
    TREE_IMAGES,
    striped_mask,
    voc_xml,
)


@pytest.fixture
def voc_tree(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a small VOC tree and return its root.

    Images 40x32 (W x H) JPEGs; train.txt and val.txt in ImageSets/Segmentation;
    train_aug in the chosen place and line format.
    """

    def make(aug_list: str = "SegmentationAug", aug_format: str = "paths") -> Path:
        root = tmp_path / "VOC2012"
        rng = np.random.default_rng(0)
        for name, (objects, indices) in TREE_IMAGES.items():
            io.write_image(root / "JPEGImages" / f"{name}.jpg", rng.integers(0, 256, (32, 40, 3)))
            io.write_mask(root / "SegmentationClass" / f"{name}.png", striped_mask(32, 40, indices))
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{name}.xml").write_text(voc_xml(name, objects))
        io.write_image(root / "JPEGImages" / f"{AUG_ONLY}.jpg", rng.integers(0, 256, (32, 40, 3)))
        io.write_mask(
            root / "SegmentationClassAug" / f"{AUG_ONLY}.png",
            striped_mask(32, 40, AUG_ONLY_INDICES),
        )
        lists = root / "ImageSets" / "Segmentation"
        io.write_lines(lists / "train.txt", ["2007_000001", "2007_000002"])
        io.write_lines(lists / "val.txt", ["2008_000003"])
        aug_names = ["2007_000001", "2007_000002", AUG_ONLY]
        if aug_format == "paths":
            lines = [f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" for n in aug_names]
        else:
            lines = aug_names
        aug_dir = root if aug_list == "root" else root / "ImageSets" / aug_list
        io.write_lines(aug_dir / "train_aug.txt", lines)
        return root

    return make


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (24 train + 8 val, seed 0), generated once per session."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, **SYNTH_PARAMS)
    return root
