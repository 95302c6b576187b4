"""Affinity stage (DESIGN.md §1.2, §1.3): dense-CRF affinity labels per CAM shard,
their evaluation, and AffinityNet training (workflow/rules/affinity.smk).

CRF shards hold, per image, one (2, C + 1, H, W) dataset: the low-alpha ("la")
and high-alpha ("ha") CRF marginals, background first, then the present
classes in `class_ids` order. `fit_affinity` trains a given model on them (the
library entry point); `crf_labels`, `evaluate_crf_labels` and `train_affinity`
are the drivers of the `psa` subcommands of the same names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from psa_core import io
from psa_core.affinity import affinity_loss, affinity_training_labels, crf_label_map
from psa_core.defaults import AFFINITY_RADIUS, AFFINITY_TRAIN, CRF
from psa_core.errors import PsaError
from psa_core.stages.common import (
    check_shard_classes,
    image_paths,
    init_model,
    listed_shard_names,
    shard_index,
    training_transform,
)
from psa_core.training import digest, sample_rng, stage_options, train
from psa_core.transforms import AffinityTrainTransform

log = logging.getLogger("psa")

LOW, HIGH = 0, 1
"""Index of the low- and high-alpha stack in a CRF shard's (2, C + 1, H, W) datasets."""


# -- reading shards -------------------------------------------------------------


def _checked_size(path: Path, name: str, maps: np.ndarray, image: np.ndarray, what: str) -> None:
    if maps.shape[-2:] != image.shape[:2]:
        raise PsaError(
            f"{path}: {what} of '{name}' are {maps.shape[-1]}x{maps.shape[-2]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}; they come from another dataset: delete the "
            "shard and rerun the stage that makes it"
        )


# -- crf_labels -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CrfSettings:
    """The alphas and dense-CRF parameters of `crf_labels` (DESIGN.md §1.2)."""

    alpha_low: float = CRF.alpha_low
    alpha_high: float = CRF.alpha_high
    iterations: int = CRF.iterations
    gaussian_sxy: float = CRF.gaussian_sxy
    gaussian_compat: float = CRF.gaussian_compat
    bilateral_sxy: float = CRF.bilateral_sxy
    bilateral_srgb: float = CRF.bilateral_srgb
    bilateral_compat: float = CRF.bilateral_compat


def _crf_one(job: tuple[np.ndarray, np.ndarray, CrfSettings]) -> np.ndarray:
    """(image, cams, settings) → (2, C + 1, H, W) float32; runs in a worker process."""
    from psa_core.crf import crf_score_stacks

    image, cams, settings = job
    la, ha = crf_score_stacks(
        image,
        cams,
        alpha_low=settings.alpha_low,
        alpha_high=settings.alpha_high,
        iterations=settings.iterations,
        gaussian_sxy=settings.gaussian_sxy,
        gaussian_compat=settings.gaussian_compat,
        bilateral_sxy=settings.bilateral_sxy,
        bilateral_srgb=settings.bilateral_srgb,
        bilateral_compat=settings.bilateral_compat,
    )
    return np.stack([la, ha])


def crf_labels(
    *,
    root: Path,
    images: Path,
    labels: Path,
    cams: Path,
    alpha_low: float,
    alpha_high: float,
    iterations: int,
    gaussian_sxy: float,
    gaussian_compat: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_compat: float,
    dtype: str,
    workers: int,
    out: Path,
    out_maps: Path,
) -> None:
    """`psa crf-labels`: CRF score stacks of one CAM shard, and its three-way label maps.

    Writes `out` (HDF5: per image the (2, C + 1, H, W) la / ha marginals,
    `class_ids`, provenance) and `out_maps/NAME.png` (VOC palette: class
    index, 0 background, 255 uncertain; DESIGN.md §1.2), each atomically.
    """
    from psa_core.data import read_labels

    if workers < 1:
        raise PsaError(f"--workers {workers}: must be at least 1")
    classes, _ = read_labels(labels)
    check_shard_classes(cams, classes, labels)
    names = listed_shard_names(cams, images)
    settings = CrfSettings(
        alpha_low=alpha_low,
        alpha_high=alpha_high,
        iterations=iterations,
        gaussian_sxy=gaussian_sxy,
        gaussian_compat=gaussian_compat,
        bilateral_sxy=bilateral_sxy,
        bilateral_srgb=bilateral_srgb,
        bilateral_compat=bilateral_compat,
    )
    if alpha_low > alpha_high:
        raise PsaError(
            f"alpha_low {alpha_low} > alpha_high {alpha_high}: the low-alpha background must be "
            "the stronger one; swap them"
        )
    cam_data, _ = io.read_score_shard(cams)
    paths = image_paths(root, names)
    jobs = []
    for name, path in zip(names, paths, strict=True):
        maps, _ = cam_data[name]
        image = io.read_image(path)  # a corrupt image is reported before any CRF runs
        _checked_size(cams, name, maps, image, "CAMs")
        jobs.append((image, maps, settings))
    log.info("shard %s: %d images, %d worker(s)", cams.name, len(jobs), workers)
    start = time.perf_counter()
    stacks = list(_map(_crf_one, jobs, workers))
    elapsed = time.perf_counter() - start
    log.info(
        "CRF: %d images in %.1f s (%.2f images/s)",
        len(jobs),
        elapsed,
        len(jobs) / max(elapsed, 1e-9),
    )
    scores = {name: (stack, cam_data[name][1]) for name, stack in zip(names, stacks, strict=True)}
    with io.atomic_dir(out_maps) as folder:
        for name, (stack, class_ids) in scores.items():
            io.write_mask(folder / f"{name}.png", crf_label_map(stack[LOW], stack[HIGH], class_ids))
    io.write_score_shard(
        out,
        scores,
        attrs={
            "stage": "crf_labels",
            "classes": classes,
            "cams": str(cams),
            **dataclasses.asdict(settings),
        },
        dtype=dtype,
    )


def _map(func: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> Iterator[Any]:
    """`map` over `jobs`, in order, in `workers` processes (in this one for 1)."""
    if workers == 1 or len(jobs) <= 1:
        yield from map(func, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        yield from pool.map(func, jobs)


# -- evaluate_crf_labels ----------------------------------------------------------


def evaluate_crf_labels(
    *,
    root: Path,
    images: Path,
    labels: Path,
    crf: Sequence[Path],
    out_json: Path,
    out_csv: Path,
) -> None:
    """`psa evaluate-crf-labels`: how good the supervision of AffinityNet is, against GT.

    Precision and recall of the confident foreground and background, the
    share left uncertain, and mIoU over the labelled pixels
    (`psa_core.evaluate.CrfLabelQuality`).
    """
    from psa_core.data import gt_mask_path, read_labels
    from psa_core.evaluate import CrfLabelQuality, write_crf_label_report

    classes, _ = read_labels(labels)
    names = io.read_lines(images)
    for shard in crf:
        check_shard_classes(shard, classes, labels)
    where = shard_index(crf, names, "CRF")
    quality = CrfLabelQuality(len(classes) + 1)
    wanted = set(names)
    for shard in dict.fromkeys(where[n] for n in names):
        data, _ = io.read_score_shard(shard)  # one shard in memory at a time
        for name, (stack, class_ids) in data.items():
            if name not in wanted:
                continue
            wanted.discard(name)
            mask_file = gt_mask_path(root, name)
            if mask_file is None:
                raise PsaError(
                    f"{root}: no ground-truth mask for '{name}'; evaluate a split that has masks"
                )
            quality.add(crf_label_map(stack[LOW], stack[HIGH], class_ids), io.read_mask(mask_file))
    result = quality.result()
    log.info(
        "CRF labels: fg precision %s recall %s, bg precision %s recall %s, uncertain %s, "
        "mIoU (labelled) %s",
        *(result[k] for k in ("fg_precision", "fg_recall", "bg_precision", "bg_recall")),
        result["uncertain_fraction"],
        result["miou"],
    )
    write_crf_label_report(result, ["background", *classes], out_json, out_csv)


# -- AffinityNet training ------------------------------------------------------------


class AffinityTrainDataset(Dataset):
    """Images, their CRF score stacks and the pair labels of AffinityNet (DESIGN.md §1.2).

    Keys are `(epoch, index)`; sample `index` of `epoch` is augmented with
    `sample_rng(seed, epoch, index)`: colour jitter, then one crop and flip of
    the image and both score stacks together (`AffinityTrainTransform`),
    then 8×8 pooling, the label rules and the pair masks
    (`affinity_training_labels`). Stacks are read from the shards one image
    at a time, so a VOC-sized split needs no memory for them.

    Items: (image (3, crop, crop) float32, bg_pos, fg_pos, neg: each
    (n_offsets, n_from) float32).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: Sequence[str],
        shards: Mapping[str, Path],
        transform: AffinityTrainTransform,
        seed: int,
        radius: int = AFFINITY_RADIUS,
    ):
        if not names:
            raise PsaError("training set: the image list is empty; check the split")
        self.names = list(names)
        self.paths = image_paths(root, self.names)
        self.shards = [Path(shards[n]) for n in self.names]
        self._check_sizes()
        self.transform = transform
        self.seed = seed
        self.radius = radius

    def _check_sizes(self) -> None:
        """Every image decodes and matches its CRF stacks, checked before training starts."""
        from psa_core.data import verified_image_size

        shapes: dict[Path, dict[str, tuple[int, ...]]] = {}
        for name, path, shard in zip(self.names, self.paths, self.shards, strict=True):
            if shard not in shapes:
                shapes[shard] = io.read_score_shapes(shard)
            height, width = shapes[shard][name][-2:]
            image_w, image_h = verified_image_size(path)
            if (image_w, image_h) != (width, height):
                raise PsaError(
                    f"{shard}: CRF scores of '{name}' are {width}x{height} but the image is "
                    f"{image_w}x{image_h}; they come from another dataset: delete the shard and "
                    "rerun crf_labels"
                )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        epoch, index = key
        name, shard = self.names[index], self.shards[index]
        image = io.read_image(self.paths[index])
        stack, _ = io.read_score(shard, name)
        _checked_size(shard, name, stack, image, "CRF scores")
        num_scores = stack.shape[1]
        scores = np.moveaxis(stack.reshape(-1, *stack.shape[-2:]), 0, -1)  # (H, W, 2(C + 1))
        x, scores = self.transform(image, scores, sample_rng(self.seed, epoch, index))
        labels = affinity_training_labels(
            scores[..., :num_scores], scores[..., num_scores:], self.radius
        )
        return (torch.from_numpy(x), *(torch.from_numpy(label) for label in labels))

    def fingerprint(self) -> dict[str, Any]:
        """What makes the data of a run: names, CRF settings, augmentation, seed, radius."""
        shard_attrs = {}
        for shard in dict.fromkeys(self.shards):
            attrs = io.read_score_shard_attrs(shard)
            shard_attrs[shard.name] = {k: v for k, v in attrs.items() if k != "psa_core_version"}
        return {
            "kind": "affinity",
            "num_images": len(self.names),
            "names": digest(self.names),
            "crf": digest(shard_attrs),
            "transform": dataclasses.asdict(self.transform),
            "seed": self.seed,
            "radius": self.radius,
        }


def affinity_pair_loss(
    model: nn.Module, batch: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
    """The AffinityNet loss of a batch (DESIGN.md §1.3); parts: the three terms, the pair counts."""
    images, bg_pos, fg_pos, neg = batch
    return affinity_loss(model(images), bg_pos, fg_pos, neg)


def fit_affinity(
    model: nn.Module,
    *,
    root: str | os.PathLike,
    names: Sequence[str],
    shards: Mapping[str, Path],
    crop_size: int = AFFINITY_TRAIN.crop_size,
    color_jitter: tuple[float, float, float, float] = AFFINITY_TRAIN.color_jitter,
    flip: bool = True,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Train AffinityNet (DESIGN.md §1.3) on CRF score shards, on the shared loop.

    Args:
        model: an affinity model (`build_model(backbone, "affinity")`),
            initial weights loaded.
        names: training images; shards: name → CRF shard holding its stacks.
        crop_size, color_jitter, flip: `AffinityTrainTransform`.
        seed: data order, augmentation, dropout.
        options: keywords of `psa_core.training.train` (out_weights,
            checkpoint_path, log_csv, device, …); the optimiser ones default
            to the published `AFFINITY_TRAIN`.
    """
    transform = training_transform(
        AffinityTrainTransform,
        model.normalization,
        crop_size=crop_size,
        flip=flip,
        color_jitter=color_jitter,
    )
    dataset = AffinityTrainDataset(root, names, shards, transform, seed, model.radius)
    return train(
        model, dataset, affinity_pair_loss, seed=seed, **stage_options(AFFINITY_TRAIN, options)
    )


def train_affinity(
    *,
    root: Path,
    images: Path,
    labels: Path,
    crf: Sequence[Path],
    backbone: str,
    init: Path | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    poly_power: float,
    momentum: float,
    crop_size: int,
    color_jitter: Sequence[float],
    num_workers: int,
    radius: int,
    seed: int,
    device: str,
    amp: str,
    checkpoint: Path,
    restart_on_change: bool,
    out_log: Path,
    out: Path,
) -> None:
    """`psa train-affinity`: AffinityNet from the CRF shards of the training split."""
    from psa_core.data import read_labels

    classes, _ = read_labels(labels)
    names = io.read_lines(images)
    for shard in crf:
        check_shard_classes(shard, classes, labels)
    shards = shard_index(crf, names, "CRF")
    model = init_model(backbone, "affinity", len(classes), init, seed, log, radius=radius)
    fit_affinity(
        model,
        root=root,
        names=names,
        shards=shards,
        restart_on_change=restart_on_change,
        crop_size=crop_size,
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
