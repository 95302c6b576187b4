"""Helpers shared by the stage drivers: image lists, trained models, shard names."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from psa_core import io
from psa_core.errors import PsaError


def check_names(names: Sequence[str], labels: Mapping[str, np.ndarray], what: str) -> None:
    """PsaError unless `names` is non-empty and every name has labels."""
    if not names:
        raise PsaError(f"{what}: the image list is empty; check the split or the image list file")
    missing = [n for n in names if n not in labels]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise PsaError(
            f"{what}: {len(missing)} image(s) have no labels ({shown}); rerun `psa index` so the "
            "image list and the labels file match"
        )


def image_paths(root: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """The image file of every name, all checked to exist (one error naming the first missing)."""
    from psa_core.data import image_path

    paths = [Path(image_path(root, n)) for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise PsaError(
            f"{missing[0]}: image not found ({len(missing)} missing under {root}); check the "
            "dataset root and the image list"
        )
    return paths


_AUGMENTATION_TYPES = {
    "crop_size": int,
    "flip": bool,
    "color_jitter": lambda values: tuple(float(v) for v in values),
    "resize_long": lambda values: None if values is None else (int(values[0]), int(values[1])),
}


def training_transform(transform_class: type, normalization: Any, **settings: Any) -> Any:
    """A training augmentation (`psa_core.transforms.*TrainTransform`) from plain values.

    `settings` (crop_size, resize_long, flip, color_jitter) are coerced to the
    dataclass's types; a bad value is a PsaError naming it.
    """
    try:
        return transform_class(
            normalization=normalization,
            **{key: _AUGMENTATION_TYPES[key](value) for key, value in settings.items()},
        )
    except ValueError as exc:
        raise PsaError(f"training augmentation: {exc}") from None


def load_trained_model(
    weights: Path, backbone: str, head: str, num_classes: int, device: str, **model_options: Any
) -> nn.Module:
    """Build a model, load trained weights strictly, move it to `device`, eval mode.

    `model_options` go to `build_model` (e.g. `radius`).
    """
    from psa_core.device import resolve_device
    from psa_core.models import build_model
    from psa_core.models.weights import load_weights

    model = build_model(backbone, head, num_classes=num_classes, **model_options)
    load_weights(model, weights)
    return model.to(resolve_device(device)).eval()


def init_model(
    backbone: str,
    head: str,
    num_classes: int,
    init: Path | None,
    seed: int,
    log: logging.Logger,
    **model_options: Any,
) -> nn.Module:
    """A model to train: new layers seeded by `seed`, the backbone from `init` if given.

    `init` is an ImageNet file or the weights of an earlier stage (the CAM
    network for AffinityNet); only the backbone is taken from it.
    `model_options` go to `build_model` (e.g. `radius`).
    """
    import torch

    from psa_core.models import build_model
    from psa_core.models.weights import load_weights

    torch.manual_seed(seed)  # new layers start the same in every run of a config
    model = build_model(backbone, head, num_classes=num_classes, **model_options)
    if init:
        for note in load_weights(model, init, backbone_only=True):
            log.info("init weights: %s", note)
    return model


# -- shards ------------------------------------------------------------------------


def _shard_classes(path: Path) -> list[str] | None:
    classes = io.read_score_shard_attrs(path).get("classes")
    return json.loads(classes) if isinstance(classes, str) else classes


def check_shard_classes(path: Path, classes: Sequence[str], labels_path: Path) -> None:
    """PsaError unless the shard at `path` was made for the class list of `labels_path`."""
    stored = _shard_classes(path)
    if stored != list(classes):
        raise PsaError(
            f"{path}: made for classes {stored}, but {labels_path} has {list(classes)}; it comes "
            "from another dataset or class list: delete it and rerun the stage that makes it"
        )


def shard_index(shards: Sequence[Path], names: Sequence[str], what: str) -> dict[str, Path]:
    """Image name → the shard holding it; PsaError naming the first listed image none holds."""
    where: dict[str, Path] = {}
    for shard in shards:
        for name in io.read_score_shard_names(shard):
            where.setdefault(name, Path(shard))
    missing = [n for n in names if n not in where]
    if missing:
        raise PsaError(
            f"{what} shards lack {len(missing)} listed image(s) (first: '{missing[0]}'); "
            "rerun the stage that makes them for this image list"
        )
    return where


def mask_files(folders: Sequence[Path], names: Sequence[str], rule: str) -> dict[str, Path]:
    """Image name → its NAME.png in the mask folders of `rule`; PsaError naming the first
    listed image that has none."""
    files = {p.stem: p for folder in folders for p in Path(folder).glob("*.png")}
    missing = [n for n in names if n not in files]
    if missing:
        raise PsaError(
            f"the {rule} mask folders lack {len(missing)} listed image(s) (first: "
            f"'{missing[0]}'); rerun {rule} for this split"
        )
    return files


def listed_shard_names(shard: Path, images: Path) -> list[str]:
    """The image names a CAM shard holds, each checked to be in the image list `images`."""
    listed = set(io.read_lines(images))
    names = io.read_score_shard_names(shard)
    foreign = [n for n in names if n not in listed]
    if foreign:
        raise PsaError(
            f"{shard}: holds image '{foreign[0]}', which is not in {images}; the shard comes from "
            "another dataset: delete it and rerun infer_cam"
        )
    return names
