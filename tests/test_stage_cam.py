"""The CAM stage driver `infer_cam` in process: a whole image list, or one shard of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from psa_core import io
from psa_core.data import write_labels
from psa_core.errors import PsaError
from psa_core.models import build_model
from psa_core.settings import CamInferSettings, ModelSettings, RunSettings
from psa_core.stages.cam import infer_cam
from psa_core.stages.common import LabelledImages, Shard
from tests.train_helpers import NUM_CLASSES, write_dataset

CLASSES = [f"class{i}" for i in range(NUM_CLASSES)]


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[str], dict]:
    """5 small images, their list and labels, untrained tiny CAM weights: (names, keywords)."""
    root = tmp_path / "data"
    names, labels = write_dataset(root, n=5, sizes=(24, 32))
    write_labels(tmp_path / "labels.json", CLASSES, labels)
    io.write_lines(tmp_path / "images.txt", names)
    torch.manual_seed(0)
    io.save_torch(tmp_path / "cam.pt", build_model("tiny", "cam", NUM_CLASSES).state_dict())
    keywords = {
        "data": LabelledImages(
            root=root, images=tmp_path / "images.txt", labels=tmp_path / "labels.json"
        ),
        "weights": tmp_path / "cam.pt",
        "model": ModelSettings(backbone="tiny"),
        "infer": CamInferSettings(scales=(1.0,), dtype="float32"),
        "run": RunSettings(device="cpu"),
    }
    return names, keywords


def test_infer_cam_whole_list_or_one_shard(inputs: tuple[list[str], dict], tmp_path: Path) -> None:
    names, keywords = inputs
    infer_cam(**keywords, shard=Shard(), out=tmp_path / "whole.h5")
    infer_cam(**keywords, shard=Shard(shard=1, shard_size=3), out=tmp_path / "part.h5")

    whole, attrs = io.read_score_shard(tmp_path / "whole.h5")
    assert sorted(whole) == names  # without --shard: every listed image
    assert attrs["images"] == str(keywords["data"].images) and "shard" not in attrs
    part, part_attrs = io.read_score_shard(tmp_path / "part.h5")
    assert sorted(part) == names[3:]  # shard 1 of 3: the last two
    assert (part_attrs["shard"], part_attrs["shard_size"]) == (1, 3)
    for name in names[3:]:
        np.testing.assert_array_equal(part[name][1], whole[name][1])
        np.testing.assert_allclose(part[name][0], whole[name][0], atol=1e-6)


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ({"shard": 2, "shard_size": 3}, r"images\.txt: shard 2 does not exist: 5 images"),
        ({"shard": 1}, r"images\.txt: --shard and --shard-size go together"),
    ],
)
def test_infer_cam_bad_shard(
    inputs: tuple[list[str], dict], tmp_path: Path, shard: dict, message: str
) -> None:
    _, keywords = inputs
    with pytest.raises(PsaError, match=message):
        infer_cam(**keywords, shard=Shard(**shard), out=tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


def test_infer_cam_unlabelled_image(inputs: tuple[list[str], dict], tmp_path: Path) -> None:
    names, keywords = inputs
    io.write_lines(keywords["data"].images, [*names, "img_999"])
    with pytest.raises(PsaError, match=r"images\.txt: 1 image\(s\) have no labels \(img_999\)"):
        infer_cam(**keywords, shard=Shard(), out=tmp_path / "bad.h5")
