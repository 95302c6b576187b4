"""Shared by tests/test_stage_affinity.py: a small synthetic dataset indexed as the
pipeline does, and a CAM shard made from the ground truth, without a network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psa_core import io
from psa_core.constants import FEATURE_STRIDE
from psa_core.data import gt_mask_path, listed_names, read_labels
from psa_core.data.synthetic import generate
from psa_core.settings import DatasetSettings
from psa_core.stages.common import Shard
from psa_core.stages.data import index

NUM_TRAIN = 6
IMAGE_SIZE = (72, 104)
NUM_CLASSES = 3


@dataclass(frozen=True)
class AffinityData:
    """Paths of the small dataset: its root, the `psa index` outputs, the CAM shard."""

    root: Path
    images: Path
    labels: Path
    cams: Path
    names: list[str]
    classes: list[str]

    def data_args(self) -> list[str]:
        """The --root / --images / --labels options of every affinity subcommand."""
        return [
            "--root",
            str(self.root),
            "--images",
            str(self.images),
            "--labels",
            str(self.labels),
        ]


def fake_cams(gt: np.ndarray, class_ids: np.ndarray, stride: int = FEATURE_STRIDE) -> np.ndarray:
    """CAM-like maps from a GT mask: (C, H, W) float32 in [0, 1], each max 1.

    Class c's binary mask (GT == c + 1) average-pooled in stride × stride blocks
    (zero padded at the border) and upsampled back by repetition: blurred,
    blocky maps that sit on the object, as a classifier's CAMs would.
    """
    height, width = gt.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    maps = []
    for class_id in class_ids:
        binary = np.zeros((out_h * stride, out_w * stride), dtype=np.float32)
        binary[:height, :width] = gt == class_id + 1
        pooled = binary.reshape(out_h, stride, out_w, stride).mean(axis=(1, 3))
        up = np.repeat(np.repeat(pooled, stride, axis=0), stride, axis=1)[:height, :width]
        maps.append(up / max(float(up.max()), 1e-5))
    return np.stack(maps).astype(np.float32)


def cam_scores(data_root: Path, labels: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (fake CAMs of the present classes, their class ids)}, as infer_cam stores them."""
    _, label_map = read_labels(labels)
    scores = {}
    for name, label in label_map.items():
        class_ids = np.flatnonzero(label > 0)
        gt = io.read_mask(gt_mask_path(data_root, name))
        scores[name] = (fake_cams(gt, class_ids), class_ids)
    return scores


def write_cam_shard(
    path: Path, scores: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]
) -> None:
    io.write_score_shard(path, scores, attrs={"stage": "cam", "classes": classes})


def make_affinity_data(folder: Path) -> AffinityData:
    """Synthetic train split (6 images, 3 classes), its index and a fake CAM shard."""
    root = folder / "data"
    generate(
        root,
        num_train=NUM_TRAIN,
        num_val=2,
        image_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES,
        seed=0,
    )
    images, labels = folder / "index" / "images.txt", folder / "index" / "labels.json"
    index(
        root=root,
        split="train",
        shard=Shard(),
        dataset=DatasetSettings(),
        out_images=images,
        out_labels=labels,
    )
    classes, _ = read_labels(labels)
    cams = folder / "cam" / "shard-0.h5"
    write_cam_shard(cams, cam_scores(root, labels), classes)
    return AffinityData(root, images, labels, cams, listed_names(images), classes)
