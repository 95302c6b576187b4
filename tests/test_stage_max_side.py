"""Images above `dataset.max_side` (docs/design.md §1.8), stage by stage on 80-100 px
images with max_side 64: CAMs at the working size, the stages that read them with the
full-size image, the evaluations against full-size ground truth, and the one-line error
for sizes that are no scaling of the image. (Predict and infer-seg: test_stage_segmentation.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from psa_core import io
from psa_core.affinity import AffinityTrainDataset, crf_stacks_job
from psa_core.cam import multiscale_cam
from psa_core.data import gt_mask_path, image_path, listed_names, read_labels
from psa_core.data.synthetic import generate
from psa_core.models import build_model
from psa_core.segmentation import SegTrainDataset
from psa_core.settings import (
    CamInferSettings,
    CrfSettings,
    DatasetSettings,
    ModelSettings,
    RunSettings,
)
from psa_core.stages.cam import infer_cam
from psa_core.stages.common import LabelledImages, Shard
from psa_core.transforms import (
    IMAGENET_NORMALIZATION,
    AffinityTrainTransform,
    SegTrainTransform,
    resize,
    to_working_size,
    working_size,
)
from tests.cli_helpers import psa_in_process as psa

MAX_SIDE = 64
NUM_CLASSES = 2


class Run:
    """The small dataset, its index, untrained tiny weights and the CAM shard."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = folder / "data"
        generate(self.root, num_train=3, num_val=1, image_size=(80, 100), num_classes=2, seed=1)
        self.images, self.labels = folder / "images.txt", folder / "labels.json"
        proc = psa("index", "--root", str(self.root), "--split", "train",
                   "--out-images", str(self.images), "--out-labels", str(self.labels))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        self.names = listed_names(self.images)
        self.classes, self.label_map = read_labels(self.labels)
        self.weights = {}
        for head in ("cam", "affinity"):
            torch.manual_seed(0)
            self.weights[head] = folder / f"{head}.pt"
            io.save_torch(self.weights[head], build_model("tiny", head, NUM_CLASSES).state_dict())
        self.cams = folder / "cam.h5"
        infer_cam(
            data=LabelledImages(root=self.root, images=self.images, labels=self.labels),
            weights=self.weights["cam"],
            shard=Shard(),
            dataset=DatasetSettings(max_side=MAX_SIDE),
            model=ModelSettings(backbone="tiny"),
            infer=CamInferSettings(scales=(1.0, 0.5), dtype="float32"),
            run=RunSettings(device="cpu"),
            out=self.cams,
        )

    def data_args(self) -> list[str]:
        return ["--root", str(self.root), "--images", str(self.images),
                "--labels", str(self.labels)]  # fmt: skip

    def image(self, name: str) -> np.ndarray:
        return io.read_image(image_path(self.root, name))

    def gt(self, name: str) -> np.ndarray:
        return io.read_mask(gt_mask_path(self.root, name))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(tmp_path_factory.mktemp("max_side"))


@pytest.fixture(scope="module")
def crf(run: Run) -> tuple[Path, Path]:
    """`psa crf-labels` on the working-size CAMs, with the full-size images."""
    out, maps = run.folder / "crf.h5", run.folder / "crf-maps"
    proc = psa("crf-labels", *run.data_args(), "--cams", str(run.cams),
               "--iterations", "2", "--out", str(out), "--out-maps", str(maps))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, maps


def working(run: Run, name: str) -> tuple[int, int]:
    return working_size(*run.image(name).shape[:2], MAX_SIDE)


def test_the_images_are_above_max_side(run: Run) -> None:
    for name in run.names:
        assert max(run.image(name).shape[:2]) > MAX_SIDE
        assert max(working(run, name)) == MAX_SIDE


def test_infer_cam_stores_cams_at_the_working_size(run: Run) -> None:
    """The CAMs of an image above max_side: those of the image scaled down (PIL bilinear)."""
    stored, attrs = io.read_score_shard(run.cams)
    assert attrs["max_side"] == MAX_SIDE
    net = build_model("tiny", "cam", NUM_CLASSES)
    net.load_state_dict(io.load_torch(run.weights["cam"]))
    net.eval()
    for name in run.names:
        maps, class_ids = stored[name]
        assert maps.shape == (len(class_ids), *working(run, name))
        small = to_working_size(run.image(name), MAX_SIDE)
        expected = multiscale_cam(net, small, run.label_map[name], scales=(1.0, 0.5))
        np.testing.assert_allclose(maps, expected[class_ids], atol=1e-6)


def test_crf_labels_take_working_size_cams_with_the_full_image(
    run: Run, crf: tuple[Path, Path]
) -> None:
    out, maps = crf
    stacks, _ = io.read_score_shard(out)
    cams, _ = io.read_score_shard(run.cams)
    name = run.names[0]
    stack, class_ids = stacks[name]
    assert stack.shape == (2, len(class_ids) + 1, *working(run, name))
    small = to_working_size(run.image(name), MAX_SIDE)
    expected = crf_stacks_job((small, cams[name][0], CrfSettings(iterations=2)))
    np.testing.assert_allclose(stack, expected, atol=1e-3)  # stored as float16
    for name in run.names:
        assert io.read_mask(maps / f"{name}.png").shape == working(run, name)


def test_evaluations_scale_the_ground_truth_to_the_working_size(
    run: Run, crf: tuple[Path, Path]
) -> None:
    """CAMs that are the ground truth scaled down (nearest) score a perfect mIoU; the
    CRF-label evaluation takes the full-size masks too."""
    perfect = {}
    for name in run.names:
        gt = resize(run.gt(name), working(run, name), "nearest")
        class_ids = np.flatnonzero(run.label_map[name])
        perfect[name] = (np.stack([(gt == c + 1) for c in class_ids]).astype(np.float32), class_ids)
    shard = run.folder / "perfect.h5"
    io.write_score_shard(shard, perfect, attrs={"stage": "cam", "classes": run.classes})
    out = run.folder / "eval"
    proc = psa("evaluate-cam", *run.data_args(), "--cams", str(shard),
               "--out-json", str(out / "cam.json"), "--out-csv", str(out / "cam.csv"),
               "--out-svg", str(out / "cam.svg"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "cam.json").read_text())
    assert result["num_images"] == len(run.names) and result["published_miou"] == 1.0

    proc = psa("evaluate-crf-labels", *run.data_args(), "--crf", str(crf[0]),
               "--out-json", str(out / "crf.json"), "--out-csv", str(out / "crf.csv"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "crf.json").read_text())["num_images"] == len(run.names)


def test_random_walk_masks_and_training_data_at_the_working_size(
    run: Run, crf: tuple[Path, Path]
) -> None:
    """The walk's masks (the pseudo masks) have the working size; both training sets take
    the full-size images with those masks and CRF stacks."""
    out = run.folder / "rw"
    proc = psa("random-walk", *run.data_args(), "--cams", str(run.cams),
               "--weights", str(run.weights["affinity"]), "--device", "cpu",
               "--out", str(out / "rw.h5"), "--out-affinity", str(out / "aff.h5"),
               "--out-masks", str(out / "masks"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in run.names:
        assert io.read_mask(out / "masks" / f"{name}.png").shape == working(run, name)
    proc = psa("evaluate-random-walk", *run.data_args(), "--walks", str(out / "rw.h5"),
               "--affinities", str(out / "aff.h5"), "--cams", str(run.cams),
               "--out-json", str(out / "rw.json"), "--out-csv", str(out / "rw.csv"),
               "--out-plot", str(out / "rw.svg"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    shards = dict.fromkeys(run.names, crf[0])
    transform = AffinityTrainTransform(IMAGENET_NORMALIZATION, crop_size=72)
    x, *pairs = AffinityTrainDataset(run.root, run.names, shards, transform, seed=0)[0, 0]
    assert x.shape == (3, 72, 72) and all(p.shape == pairs[0].shape for p in pairs)
    transform = SegTrainTransform(IMAGENET_NORMALIZATION, crop_size=48, resize_long=(48, 64))
    x, mask = SegTrainDataset(run.root, run.names, out / "masks", transform, seed=0)[0, 0]
    assert x.shape == (3, 48, 48) and mask.shape == (48, 48)


def test_sizes_that_are_no_scaling_of_the_image_are_one_line_errors(run: Run) -> None:
    """CAMs one pixel wider than the working size: crf-labels and evaluate-cam refuse them."""
    stored, _ = io.read_score_shard(run.cams)
    name = run.names[1]
    maps, class_ids = stored[name]
    stored[name] = (np.pad(maps, ((0, 0), (0, 0), (0, 1))), class_ids)
    shard = run.folder / "wider.h5"
    io.write_score_shard(shard, stored, attrs={"stage": "cam", "classes": run.classes})
    h, w = maps.shape[1:]
    out = run.folder / "bad"
    for args in (
        ["crf-labels", "--cams", str(shard), "--out", str(out / "crf.h5"),
         "--out-maps", str(out / "maps")],
        ["evaluate-cam", "--cams", str(shard), "--out-json", str(out / "cam.json"),
         "--out-csv", str(out / "cam.csv"), "--out-svg", str(out / "cam.svg")],
    ):  # fmt: skip
        proc = psa(*args[:1], *run.data_args(), *args[1:])
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert f"{w + 1}x{h}" in proc.stderr, proc.stderr
    assert not out.exists() or not any(out.rglob("*.*"))
