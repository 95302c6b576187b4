"""CAM stage (DESIGN.md §1.1, §1.5): train the classifier, multi-scale CAMs per shard,
CAM evaluation over a background-threshold sweep (workflow/rules/cam.smk).

`fit_cam` trains a given model on a list of images (the library entry point);
`train_cam`, `infer_cam` and `evaluate_cam` are the drivers the `psa`
subcommands of the same names call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from psa_core import io
from psa_core.defaults import CAM_TRAIN
from psa_core.errors import PsaError
from psa_core.stages.common import (
    check_names,
    image_paths,
    init_model,
    load_trained_model,
    training_transform,
)
from psa_core.training import digest, sample_rng, stage_options, train
from psa_core.transforms import CamTrainTransform, Normalization, center_crop_box, crop

log = logging.getLogger("psa")


# -- training data and loss ---------------------------------------------------


class _LabelledImages(Dataset):
    """Image paths and (K,) float32 labels of a list of names, checked up front."""

    def __init__(
        self,
        root: str | os.PathLike,
        names: Sequence[str],
        labels: Mapping[str, np.ndarray],
        what: str,
    ):
        check_names(names, labels, what)
        self.names = list(names)
        self.paths = image_paths(root, self.names)
        self.labels = [np.asarray(labels[n], dtype=np.float32) for n in self.names]

    def __len__(self) -> int:
        return len(self.names)


class CamTrainDataset(_LabelledImages):
    """Augmented images and image-level labels for CAM training.

    Keys are `(epoch, index)`; sample `index` of `epoch` is augmented with
    `sample_rng(seed, epoch, index)`.

    Items: (image (3, crop, crop) float32 normalised, label (K,) float32).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: Sequence[str],
        labels: Mapping[str, np.ndarray],
        transform: CamTrainTransform,
        seed: int,
    ):
        super().__init__(root, names, labels, "training set")
        self.transform = transform
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image = io.read_image(self.paths[index])
        x = self.transform(image, sample_rng(self.seed, epoch, index))
        return torch.from_numpy(x), torch.from_numpy(self.labels[index])

    def fingerprint(self) -> dict[str, Any]:
        """What makes the data of a run: names, labels, augmentation, seed."""
        return {
            "kind": "cam",
            "num_images": len(self.names),
            "names": digest(self.names),
            "labels": digest([lab.tolist() for lab in self.labels]),
            "transform": dataclasses.asdict(self.transform),
            "seed": self.seed,
        }


class CamEvalDataset(_LabelledImages):
    """Validation images for the CAM loss: no augmentation, a centred
    `crop_size` window with zero padding (the reference's `CenterCrop`).

    Keys are plain indices. Items as in `CamTrainDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: Sequence[str],
        labels: Mapping[str, np.ndarray],
        normalization: Normalization,
        crop_size: int,
    ):
        super().__init__(root, names, labels, "validation set")
        self.normalization = normalization
        self.crop_size = crop_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalization.numpy(io.read_image(self.paths[index])).transpose(1, 2, 0)
        x = crop(x, center_crop_box(x.shape[:2], self.crop_size), 0.0)
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
        return torch.from_numpy(x), torch.from_numpy(self.labels[index])


def multilabel_soft_margin_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The CAM loss (DESIGN.md §1.1): multi-label soft margin on the K logits.

    batch: (images (B, 3, H, W) float32, labels (B, K) float32 of 0/1).
    """
    images, labels = batch
    logits = model(images)
    return F.multilabel_soft_margin_loss(logits.float(), labels.float()), {}


def fit_cam(
    model: nn.Module,
    *,
    root: str | os.PathLike,
    names: Sequence[str],
    labels: Mapping[str, np.ndarray],
    crop_size: int = CAM_TRAIN.crop_size,
    resize_long: tuple[int, int] | None = CAM_TRAIN.resize_long,
    color_jitter: tuple[float, float, float, float] = CAM_TRAIN.color_jitter,
    flip: bool = True,
    seed: int = 0,
    val_names: Sequence[str] | None = None,
    val_crop_size: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train the classification network of DESIGN.md §1.1 (defaults: published).

    Args:
        model: a CAM model (`build_model(backbone, "cam", K)`), initial
            weights loaded; `model.normalization` is its input convention.
        root: dataset folder in the VOC layout (root/JPEGImages/NAME.jpg).
        names: training image names; labels: name -> (K,) 0/1 array (every
            training and validation name must be present).
        crop_size, resize_long, color_jitter, flip: the augmentation
            (`CamTrainTransform`); `resize_long=None` skips the resize.
        seed: data order, augmentation, dropout.
        val_names: optional validation images; their loss on a centred
            `val_crop_size` window (default `crop_size`) is logged per epoch.
        options: keywords of `psa_core.training.train` (out_weights,
            checkpoint_path, log_csv, device, …); the optimiser ones default
            to the published `CAM_TRAIN`.
    """
    transform = training_transform(
        CamTrainTransform,
        model.normalization,
        crop_size=crop_size,
        resize_long=resize_long,
        flip=flip,
        color_jitter=color_jitter,
    )
    dataset = CamTrainDataset(root, names, labels, transform, seed)
    val_dataset = None
    if val_names:
        val_dataset = CamEvalDataset(
            root, val_names, labels, model.normalization, val_crop_size or crop_size
        )
    return train(
        model,
        dataset,
        multilabel_soft_margin_loss,
        seed=seed,
        val_dataset=val_dataset,
        **stage_options(CAM_TRAIN, options),
    )


# -- drivers ------------------------------------------------------------------


def train_cam(
    *,
    root: Path,
    images: Path,
    labels: Path,
    val_images: Path | None,
    val_labels: Path | None,
    backbone: str,
    init: Path | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    poly_power: float,
    momentum: float,
    crop_size: int,
    resize_long: Sequence[int],
    color_jitter: Sequence[float],
    num_workers: int,
    seed: int,
    device: str,
    amp: str,
    checkpoint: Path,
    restart_on_change: bool,
    out_log: Path,
    out: Path,
) -> None:
    """`psa train-cam`: read the split's labels, build the model, `fit_cam`, write weights + log."""
    from psa_core.data import read_labels

    classes, label_map = read_labels(labels)
    names = io.read_lines(images)
    val_names = None
    if val_images:
        val_classes, val_label_map = read_labels(val_labels or labels)
        if val_classes != classes:
            raise PsaError(f"{val_labels}: classes differ from {labels}; rerun `psa index`")
        val_names = io.read_lines(val_images)
        label_map = {**val_label_map, **label_map}
    model = init_model(backbone, "cam", len(classes), init, seed, log)
    fit_cam(
        model,
        root=root,
        names=names,
        labels=label_map,
        val_names=val_names,
        restart_on_change=restart_on_change,
        crop_size=crop_size,
        resize_long=tuple(resize_long),
        color_jitter=tuple(color_jitter),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        poly_power=poly_power,
        momentum=momentum,
        amp_dtype=amp,
        seed=seed,
        device=device,
        num_workers=num_workers,
        out_weights=out,
        checkpoint_path=checkpoint,
        log_csv=out_log,
        config={"init": str(init) if init else None},
    )


def infer_cam(
    *,
    root: Path,
    images: Path,
    labels: Path,
    weights: Path,
    backbone: str,
    scales: Sequence[float],
    dtype: str,
    device: str,
    amp: str,
    out: Path,
    shard: int | None = None,
    shard_size: int | None = None,
) -> None:
    """`psa infer-cam`: multi-scale CAMs (DESIGN.md §1.1) of the listed images into one HDF5 file.

    The workflow passes a shard's own image list (`psa index --shard`); by
    hand, `shard` and `shard_size` pick one shard of a longer list
    (`psa_core.data.select_shard`). Each image's dataset holds the maps of
    its present classes only, (C, H, W) in [0, 1], with their 0-based ids in
    the `class_ids` attribute.
    """
    from psa_core.cam import multiscale_cam
    from psa_core.data import image_path, read_labels, select_shard
    from psa_core.device import autocast_dtype

    classes, label_map = read_labels(labels)
    try:
        names = select_shard(io.read_lines(images), shard, shard_size)
    except PsaError as exc:
        raise PsaError(f"{images}: {exc}") from None
    check_names(names, label_map, str(images))
    model = load_trained_model(weights, backbone, "cam", len(classes), device)
    where = images.name if shard is None else f"{images.name}, shard {shard}"
    log.info("%s: %d images, scales %s, device %s", where, len(names), list(scales), device)
    scores = {}
    start = time.perf_counter()
    for name in names:
        label = label_map[name]
        image = io.read_image(image_path(root, name))
        cams = multiscale_cam(model, image, label, scales=scales, amp_dtype=autocast_dtype(amp))
        present = np.flatnonzero(label > 0)
        scores[name] = (cams[present], present)
    elapsed = time.perf_counter() - start
    log.info(
        "%d images in %.1f s (%.2f images/s)", len(names), elapsed, len(names) / max(elapsed, 1e-9)
    )
    io.write_score_shard(
        out,
        scores,
        attrs={
            "stage": "cam",
            "classes": classes,
            "backbone": backbone,
            "weights": str(weights),
            "scales": list(scales),
            "amp": amp,
            "images": str(images),
            **({} if shard is None else {"shard": shard, "shard_size": shard_size}),
        },
        dtype=dtype,
    )


def iter_cam_items(
    root: Path, names: Sequence[str], shards: Sequence[Path]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (cams (C, H, W), class_ids (C,), gt (H, W) uint8) for every listed image.

    One shard is in memory at a time (a VOC split's CAMs would not fit at once).
    """
    from psa_core.data import gt_mask_path

    stored = {name for shard in shards for name in io.read_score_shard_names(shard)}
    missing = [n for n in names if n not in stored]
    if missing:
        raise PsaError(
            f"CAM shards lack {len(missing)} listed images (first: '{missing[0]}'); "
            "delete the shards and rerun inference"
        )
    wanted = set(names)
    for shard in shards:
        data, _ = io.read_score_shard(shard)
        for name, (cams, class_ids) in data.items():
            if name not in wanted:
                continue
            wanted.discard(name)  # an image stored twice counts once
            mask_file = gt_mask_path(root, name)
            if mask_file is None:
                raise PsaError(
                    f"{root}: no ground-truth mask for '{name}'; evaluate a split that has masks"
                )
            gt = io.read_mask(mask_file)
            if gt.shape != cams.shape[1:]:
                raise PsaError(
                    f"{mask_file}: mask is {gt.shape[1]}x{gt.shape[0]} but its CAM is "
                    f"{cams.shape[2]}x{cams.shape[1]}; rerun inference for this dataset"
                )
            yield cams, class_ids, gt


def evaluate_cam(
    *,
    root: Path,
    images: Path,
    labels: Path,
    cams: Sequence[Path],
    thresholds: Sequence[float],
    bg_threshold: float,
    out_json: Path,
    out_csv: Path,
    out_svg: Path,
) -> None:
    """`psa evaluate-cam`: CAM mIoU over a background-threshold sweep (DESIGN.md §1.5)."""
    from psa_core.data import read_labels
    from psa_core.evaluate import evaluate_cams, write_cam_report

    classes, _ = read_labels(labels)
    names = io.read_lines(images)
    result = evaluate_cams(
        iter_cam_items(root, names, cams),
        num_classes=len(classes) + 1,
        thresholds=thresholds,
        published_threshold=bg_threshold,
    )
    log.info("CAM mIoU: %s", {k: v for k, v in result.items() if "miou" in k})
    write_cam_report(result, ["background", *classes], out_json, out_csv, out_svg)
