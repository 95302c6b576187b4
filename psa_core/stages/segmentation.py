"""Segmentation stage (DESIGN.md §1.6): train a DeepLab-LargeFOV-style network on the
random-walk masks, segment the evaluation splits with it, score them, and segment
any images with a trained model folder (workflow/rules/segmentation.smk, `psa predict`).

`fit_seg` trains a given model on images and masks (the library entry point);
`train_seg`, `infer_seg`, `evaluate_seg` and `predict` are the drivers of the
`psa` subcommands of the same names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from psa_core import io
from psa_core.defaults import SEGMENTATION_TRAIN
from psa_core.errors import PsaError
from psa_core.segmentation import (
    WEIGHTS_FILE,
    load_model_folder,
    multiscale_softmax,
    overlay,
    pixel_cross_entropy,
    probs_to_mask,
    size_batches,
    write_model_description,
)
from psa_core.stages.common import image_paths, init_model, mask_files, training_transform
from psa_core.training import digest, sample_rng, stage_options, train
from psa_core.transforms import SegTrainTransform

log = logging.getLogger("psa")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Files `psa predict` takes from a folder."""


# -- training ---------------------------------------------------------------------


class SegTrainDataset(Dataset):
    """Augmented images and their masks (palette PNGs, 255 ignored) for the segmentation network.

    Keys are `(epoch, index)`; sample `index` of `epoch` is augmented with
    `sample_rng(seed, epoch, index)` (`SegTrainTransform`).

    Items: (image (3, crop, crop) float32 normalised, mask (crop, crop) int64).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: Sequence[str],
        masks: str | os.PathLike,
        transform: SegTrainTransform,
        seed: int,
    ):
        if not names:
            raise PsaError("training set: the image list is empty; check the split")
        self.names = list(names)
        self.paths = image_paths(root, self.names)
        self.mask_paths = [Path(masks) / f"{name}.png" for name in self.names]
        missing = [p for p in self.mask_paths if not p.is_file()]
        if missing:
            raise PsaError(
                f"{missing[0]}: mask not found ({len(missing)} missing in {masks}); rerun "
                "export_masks for the training split"
            )
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image = io.read_image(self.paths[index])
        mask = io.read_mask(self.mask_paths[index])
        if mask.shape != image.shape[:2]:
            raise PsaError(
                f"{self.mask_paths[index]}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                f"is {image.shape[1]}x{image.shape[0]}; the masks come from another dataset"
            )
        x, mask = self.transform(image, mask, sample_rng(self.seed, epoch, index))
        return torch.from_numpy(x), torch.from_numpy(mask.astype(np.int64))

    def fingerprint(self) -> dict[str, Any]:
        """What makes the data of a run: names, the masks' bytes, augmentation, seed."""
        return {
            "kind": "segmentation",
            "num_images": len(self.names),
            "names": digest(self.names),
            "masks": digest([io.file_sha256(p) for p in self.mask_paths]),
            "transform": dataclasses.asdict(self.transform),
            "seed": self.seed,
        }


def segmentation_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pixel cross-entropy of the upsampled logits, 255 ignored (DESIGN.md §1.6)."""
    images, masks = batch
    return pixel_cross_entropy(model(images), masks), {}


def fit_seg(
    model: nn.Module,
    *,
    root: str | os.PathLike,
    names: Sequence[str],
    masks: str | os.PathLike,
    crop_size: int = SEGMENTATION_TRAIN.crop_size,
    resize_long: tuple[int, int] | None = SEGMENTATION_TRAIN.resize_long,
    color_jitter: tuple[float, float, float, float] = SEGMENTATION_TRAIN.color_jitter,
    flip: bool = True,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Train the segmentation network of DESIGN.md §1.6 on the shared loop.

    Args:
        model: `build_model(backbone, "seg", K)`, initial weights loaded.
        root: dataset folder in the VOC layout (root/JPEGImages/NAME.jpg).
        names: training images; masks: folder of NAME.png class-index masks.
        crop_size, resize_long, color_jitter, flip: `SegTrainTransform`.
        seed: data order, augmentation, dropout.
        options: keywords of `psa_core.training.train`; the optimiser ones
            default to `SEGMENTATION_TRAIN` (DeepLab-LargeFOV's solver).
    """
    transform = training_transform(
        SegTrainTransform,
        model.normalization,
        crop_size=crop_size,
        resize_long=resize_long,
        flip=flip,
        color_jitter=color_jitter,
    )
    dataset = SegTrainDataset(root, names, masks, transform, seed)
    return train(
        model, dataset, segmentation_loss, seed=seed, **stage_options(SEGMENTATION_TRAIN, options)
    )


def train_seg(
    *,
    root: Path,
    images: Path,
    labels: Path,
    masks: Path,
    backbone: str,
    init: Path | None,
    dilation: int,
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
    """`psa train-seg`: the segmentation network from a split's masks (weights file `out`);
    `psa package-seg-model` then makes the model folder that `psa predict` reads."""
    from psa_core.data import read_labels

    classes, _ = read_labels(labels)
    names = io.read_lines(images)
    model = init_model(backbone, "seg", len(classes), init, seed, log, dilation=dilation)
    fit_seg(
        model,
        root=root,
        names=names,
        masks=masks,
        crop_size=crop_size,
        resize_long=tuple(resize_long),
        color_jitter=tuple(color_jitter),
        seed=seed,
        restart_on_change=restart_on_change,
        amp_dtype=amp,
        device=device,
        num_workers=num_workers,
        out_weights=out,
        checkpoint_path=checkpoint,
        log_csv=out_log,
        config={"init": str(init) if init else None, "dilation": dilation},
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        poly_power=poly_power,
        momentum=momentum,
    )


def package_seg_model(
    *,
    weights: Path,
    labels: Path,
    backbone: str,
    dilation: int,
    scales: Sequence[float],
    flip: bool,
    crf: bool,
    settings: str | None,
    out: Path,
) -> None:
    """`psa package-seg-model`: the model folder (`weights.pt` + `model.json`) of trained
    weights, with the inference defaults `scales`, `flip`, `crf` and the `settings`
    (a JSON object: what made the model) recorded in model.json.

    A separate step from training, so that new inference defaults rewrite the
    description without retraining. The weights are checked to load first.
    """
    import shutil

    from psa_core.data import read_labels
    from psa_core.stages.common import load_trained_model

    classes, _ = read_labels(labels)
    try:
        recorded = json.loads(settings) if settings else {}
    except json.JSONDecodeError as exc:
        raise PsaError(f"--settings: not JSON ({exc}); pass a JSON object") from None
    model = load_trained_model(weights, backbone, "seg", len(classes), "cpu", dilation=dilation)
    with io.atomic_dir(out) as folder:
        shutil.copyfile(weights, folder / WEIGHTS_FILE)
        write_model_description(
            folder,
            backbone=backbone,
            dilation=dilation,
            classes=classes,
            normalization=model.normalization,
            scales=scales,
            flip=flip,
            crf=crf,
            settings=recorded,
        )
    log.info("model folder written to %s (%d classes + background)", out, len(classes))


# -- inference ----------------------------------------------------------------------


def segment_images(
    model: nn.Module,
    paths: Sequence[Path],
    *,
    scales: Sequence[float],
    flip: bool,
    crf: bool,
    batch_size: int,
    amp: str,
    progress: bool = False,
) -> Iterable[tuple[Path, np.ndarray, np.ndarray]]:
    """Yield (path, image, mask (H, W) uint8) for every image, in order.

    Images of one size go through the network together, up to `batch_size`
    a pass (`size_batches`; the probabilities do not depend on the batching).
    With `crf` each image's probabilities are refined by the dense CRF
    (`psa_core.crf.crf_inference`, PSA's kernels) before the argmax.
    """
    from psa_core.crf import crf_inference
    from psa_core.device import autocast_dtype

    amp_dtype = autocast_dtype(amp)
    bar = _progress_bar(len(paths), progress)
    window = max(batch_size, 1) * 8  # images read ahead to find equal sizes
    try:
        for first in range(0, len(paths), window):
            chunk = list(paths[first : first + window])
            images = [io.read_image(p) for p in chunk]
            order = sorted(range(len(chunk)), key=lambda i: images[i].shape)
            masks: dict[int, np.ndarray] = {}
            for batch in size_batches([images[i] for i in order], batch_size):
                picked = [order[i] for i in batch]
                probs = multiscale_softmax(
                    model, [images[i] for i in picked], scales, flip=flip, amp_dtype=amp_dtype
                )
                for i, p in zip(picked, probs, strict=True):
                    masks[i] = probs_to_mask(crf_inference(images[i], p) if crf else p)
            for i, path in enumerate(chunk):
                yield path, images[i], masks[i]
                bar.update(1)
    finally:
        bar.close()


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, file=sys.stderr, mininterval=1.0)


def infer_seg(
    *,
    root: Path,
    images: Path,
    model: Path,
    shard: int | None,
    shard_size: int | None,
    scales: Sequence[float],
    flip: bool,
    crf: bool,
    batch_size: int,
    device: str,
    amp: str,
    out_masks: Path,
) -> None:
    """`psa infer-seg`: masks of the listed images (or one shard of them) from a trained
    model folder."""
    from psa_core.data import select_shard

    names = select_shard(io.read_lines(images), shard, shard_size)
    paths = image_paths(root, names)
    net, _ = load_model_folder(model, device)
    start = time.perf_counter()
    with io.atomic_dir(out_masks) as folder:
        for path, _, mask in segment_images(
            net, paths, scales=scales, flip=flip, crf=crf, batch_size=batch_size, amp=amp
        ):
            io.write_mask(folder / f"{path.stem}.png", mask)
    elapsed = time.perf_counter() - start
    log.info(
        "%d images in %.1f s (%.2f images/s), scales %s, flip %s, CRF %s",
        len(paths),
        elapsed,
        len(paths) / max(elapsed, 1e-9),
        list(scales),
        flip,
        crf,
    )


def evaluate_seg(
    *,
    root: Path,
    images: Path,
    labels: Path,
    masks: Sequence[Path],
    out_json: Path,
    out_csv: Path,
) -> None:
    """`psa evaluate-seg`: mIoU of the segmentation network's masks of a split."""
    from psa_core.data import gt_mask_path, read_labels
    from psa_core.evaluate import MaskQuality, write_mask_report

    classes, _ = read_labels(labels)
    names = io.read_lines(images)
    found = mask_files(masks, names, "infer_seg")
    quality = MaskQuality(len(classes) + 1)
    for name in names:
        gt_file = gt_mask_path(root, name)
        if gt_file is None:
            raise PsaError(
                f"{root}: no ground-truth mask for '{name}'; evaluate a split that has masks"
            )
        quality.add(io.read_mask(found[name]), io.read_mask(gt_file))
    result = quality.result()
    log.info("segmentation network mIoU: %s (%d images)", result["miou"], result["num_images"])
    write_mask_report(result, ["background", *classes], out_json, out_csv)


# -- psa predict --------------------------------------------------------------------


def list_images(source: Path) -> list[Path]:
    """The images `psa predict` segments: a folder's image files (sorted), the paths of a
    list file (one a line, relative to the list's folder), or one image file."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise PsaError(
                f"{source}: no images in this folder ({', '.join(IMAGE_SUFFIXES)}); "
                "point --images at a folder of images, a list file or one image"
            )
        return paths
    if not source.is_file():
        raise PsaError(f"{source}: not found; pass a folder of images, a list file or one image")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    lines = [line.strip() for line in source.read_text().splitlines()]
    paths = [source.parent / line for line in lines if line and not line.startswith("#")]
    if not paths:
        raise PsaError(f"{source}: the image list is empty; put one image path a line")
    return paths


def predict(
    *,
    model: Path,
    images: Path,
    out: Path,
    overlay_images: bool,
    scales: Sequence[float] | None,
    flip: bool | None,
    crf: bool | None,
    batch_size: int,
    device: str,
    amp: str,
) -> None:
    """`psa predict`: a palette PNG mask (and with `--overlay` a JPEG overlay) per image.

    Needs no labels and no Snakemake: the model folder says everything.
    Scales, flip and CRF default to the model's recorded inference settings.
    """
    paths = list_images(images)
    stems = [p.stem for p in paths]
    clash = next((s for s in stems if stems.count(s) > 1), None)
    if clash is not None:
        raise PsaError(
            f"two input images are named '{clash}' (different folders or suffixes); their masks "
            "would overwrite each other: rename one or segment them separately"
        )
    net, description = load_model_folder(model, device)
    recorded = description["inference"]
    scales = recorded["scales"] if scales is None else scales
    flip = recorded["flip"] if flip is None else flip
    crf = recorded["crf"] if crf is None else crf
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "%d images, model %s (%s, %d classes), scales %s, flip %s, CRF %s",
        len(paths),
        model,
        description["backbone"],
        len(description["classes"]),
        list(scales),
        flip,
        crf,
    )
    for path, image, mask in segment_images(
        net,
        paths,
        scales=scales,
        flip=flip,
        crf=crf,
        batch_size=batch_size,
        amp=amp,
        progress=True,
    ):
        io.write_mask(out / f"{path.stem}.png", mask)
        if overlay_images:
            io.write_image(out / f"{path.stem}.jpg", overlay(image, mask))
    log.info("%d masks written to %s", len(paths), out)
