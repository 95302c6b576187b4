"""Every setting of the pipeline, in one place (docs/design.md §4).

Each section of `config.yaml` (`cam`, `cam.infer`, `crf`, …, and the top-level
run keys) is one frozen dataclass below: field name, type, published default
and a one-line description. Everything else is derived from these fields:

- the JSON schema Snakemake validates `config.yaml` against (`config_schema`);
- the defaults Snakemake fills into its `config` (`complete_config`);
- the options of every `psa` command, grouped by section (`psa_core.cli`);
- what a rule hands its job: the sections the job uses, as one JSON value
  (`job_settings`), so that Snakemake's params trigger reruns exactly the jobs
  whose settings changed;
- the resume fingerprint of a training run and the provenance attributes of
  the artifacts (`as_dict`).

Adding a config key is one field here and the code that uses it.

The defaults are the published PSA values (Ahn & Kwak, CVPR 2018, and the
authors' code); `config.yaml` holds the CPU demo's values beside them.
This module imports neither torch nor Snakemake.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from psa_core.constants import CHANCE_SHARE
from psa_core.errors import PsaError
from psa_core.io import MAX_IMAGE_PIXELS

# -- declaring a setting ---------------------------------------------------------


def setting(default: Any, description: str, *, cli: bool = True, **schema: Any) -> Any:
    """A dataclass field with its one-line description and extra JSON-schema keywords.

    `cli=False`: a workflow-only key (paths the rules resolve), not a `psa` option.
    `schema` adds keywords to the field's generated schema (minimum, enum, pattern, …).
    """
    return dataclasses.field(
        default=default, metadata={"description": description, "cli": cli, "schema": schema}
    )


AUTO_WORKERS = "auto"
"""The `num_workers` value that takes the worker count from the job's threads."""

_SPLIT_NAME = r"^[A-Za-z0-9_-]+$"
_CLASS_NAME = r"^[^;\s]([^;\t\r\n]*[^;\s])?$"
"""A class name: no `;` (the tag separator of a sample sheet), no tab or line break, no
space at either end (COCO's "traffic light" is one)."""
_UNIT = {"minimum": 0, "maximum": 1}
_POSITIVE = {"exclusiveMinimum": 0}


@dataclasses.dataclass(frozen=True)
class ColorJitter:
    """Strengths of the random colour jitter of a training augmentation."""

    brightness: float = setting(0.3, "Brightness jitter strength.", **_UNIT)
    contrast: float = setting(0.3, "Contrast jitter strength.", **_UNIT)
    saturation: float = setting(0.3, "Saturation jitter strength.", **_UNIT)
    hue: float = setting(0.1, "Hue jitter strength.", minimum=0, maximum=0.5)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.brightness, self.contrast, self.saturation, self.hue)


# -- the sections ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The top-level keys: where artifacts go and how every job runs."""

    output_dir: str = setting(
        "results",
        "Folder for every artifact (dataset index, CAMs, weights, metrics, logs); a folder "
        "of its own, not the working folder or the checkout's source folders.",
        cli=False,
        minLength=1,
        pattern=r"\S",
    )
    device: str = setting(
        "auto",
        "auto = CUDA when present, else CPU; or cpu, cuda, cuda:N.",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
    )
    amp: str = setting(
        "none",
        "Mixed precision (autocast) of training and inference forwards; bfloat16 on recent GPUs.",
        enum=["none", "bfloat16", "float16"],
    )
    seed: int = setting(0, "Seed of training (data order, augmentation, dropout).", minimum=0)
    max_image_pixels: int = setting(
        MAX_IMAGE_PIXELS,
        "Largest width x height of an image or mask that is read (a guard against "
        "decompression bombs); raise it for genuine larger images.",
        cli=False,
        minimum=1,
    )


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
    """Which images the pipeline runs on."""

    kind: str = setting(
        "synthetic",
        "synthetic = generate the built-in dataset; voc = a folder in the VOC 2012 devkit "
        "layout; sheet = images listed in a sample sheet (dataset.sheet); coco = a COCO-format "
        "dataset (dataset.coco_annotations, dataset.coco_images).",
        cli=False,
        enum=["synthetic", "voc", "sheet", "coco"],
    )
    root: str | None = setting(
        None,
        "Dataset folder: the VOC folder (voc), the folder the sheet's paths are relative to "
        "(sheet), the COCO folder (coco); null for synthetic (generated into "
        "<output_dir>/synthetic).",
        cli=False,
    )
    sheet: str | None = setting(
        None,
        "Sample sheet of kind sheet: a CSV/TSV with columns image, tags, split and optional "
        "mask (psa_core/data/sheet.py).",
        cli=False,
    )
    coco_annotations: str = setting(
        "annotations/instances_{split}.json",
        "Kind coco: each split's annotation file, relative to dataset.root ({split} = the split).",
        cli=False,
        pattern=r"\{split\}",
    )
    coco_images: str = setting(
        "{split}",
        "Kind coco: each split's image folder, relative to dataset.root ({split} = the split).",
        cli=False,
    )
    classes: tuple[str, ...] | None = setting(
        None,
        "Class names in label order; null = voc: <root>/classes.txt if present, else the 20 "
        "VOC classes; sheet: the sheet's tags, sorted; coco: the categories by id.",
        minItems=1,
        uniqueItems=True,
        items={"pattern": _CLASS_NAME},
    )
    train_split: str = setting(
        "train",
        "Split the networks are trained on (published train_aug).",
        cli=False,
        pattern=_SPLIT_NAME,
    )
    val_split: str | None = setting(
        "val",
        "Held-out split whose loss train_cam logs every epoch (null = none); must not overlap "
        "train_split.",
        cli=False,
        pattern=_SPLIT_NAME,
    )
    eval_splits: tuple[str, ...] = setting(
        ("train", "val"),
        "Splits that get CAMs, masks and a gallery, and are scored on the images that have a "
        "ground-truth mask; [] for none.",
        cli=False,
        uniqueItems=True,
        items={"pattern": _SPLIT_NAME},
    )
    shard_size: int = setting(
        32, "Images per shard; inference fans out one job per shard.", cli=False, minimum=1
    )
    max_side: int | None = setting(
        1024,
        "Longest side at which images are processed (ours): larger ones are scaled down, aspect "
        "kept, and CAMs, CRF labels and pseudo masks are made at that size; null = no limit.",
        minimum=64,
    )


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    """The built-in synthetic dataset (`psa_core.data.synthetic.generate`)."""

    seed: int = setting(0, "Seed of the generator.", minimum=0)
    num_train: int = setting(160, "Images in the train split.", minimum=1)
    num_val: int = setting(48, "Images in the val split.", minimum=1)
    image_size: tuple[int, int] = setting(
        (96, 160), "Smallest and largest image side in pixels.", items={"minimum": 32}
    )
    num_classes: int = setting(4, "Number of object classes.", minimum=1, maximum=8)

    def __post_init__(self) -> None:
        _check_range("image_size", self.image_size)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The backbone every network of the pipeline is built on."""

    backbone: str = setting(
        "tiny",
        "resnet38d or vgg16d (published networks) or tiny (small CPU backbone).",
        enum=["resnet38d", "vgg16d", "tiny"],
    )


_INIT_FROM_IMAGENET = (
    "an ImageNet file (.params for resnet38d, torchvision vgg16 .pth for vgg16d) or a .pth "
    "checkpoint"
)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The optimiser and augmentation every training stage shares (docs/design.md §1.1).

    The stages below restate a field only where its published default differs.
    """

    init_weights: str | None = setting(
        None, f"null (from scratch), {_INIT_FROM_IMAGENET}.", cli=False
    )
    batch_size: int = setting(16, "Images per SGD step.", minimum=1)
    epochs: int = setting(15, "Training epochs.", minimum=1)
    lr: float = setting(0.1, "Base learning rate (10x / 20x on the new layers).", **_POSITIVE)
    weight_decay: float = setting(0.0005, "Weight decay on weights (published 5e-4).", minimum=0)
    poly_power: float = setting(
        0.9, "Power of the poly schedule lr*(1-step/max_step)^power.", **_POSITIVE
    )
    # The reference's PolyOptimizer passes its weight decay into SGD's momentum
    # slot: an effective momentum of 5e-4, i.e. none (see training.build_optimizer).
    momentum: float = setting(
        0.0, "SGD momentum (published code: effectively 0).", minimum=0, exclusiveMaximum=1
    )
    crop_size: int = setting(448, "Random crop side (published 448).", minimum=8)
    flip: bool = setting(
        True, "Random horizontal flip of the crops (published: on); off where left ≠ right."
    )
    color_jitter: ColorJitter = setting(ColorJitter(), "Random colour jitter of the crops.")
    num_workers: int | str = setting(
        0,
        "DataLoader worker processes; auto = the job's threads - 1 (at least 0), for GPU "
        "training. The result does not depend on it.",
        minimum=0,
        pattern=f"^{AUTO_WORKERS}$",
    )
    image_cache_mb: int = setting(
        4096,
        "Memory for training images kept decoded (and at their working size) after their "
        "first read, shared by the workers, MB (ours); images beyond it are read from disk "
        "every epoch; 0 = off. The result does not depend on it.",
        minimum=0,
    )

    def loader_workers(self, threads: int) -> int:
        """`num_workers` as a count: `auto` is `threads` (the job's) - 1, at least 0."""
        if self.num_workers == AUTO_WORKERS:
            return max(0, int(threads) - 1)
        if isinstance(self.num_workers, str) or self.num_workers < 0:
            raise PsaError(f"num_workers {self.num_workers!r}: give a count >= 0 or {AUTO_WORKERS}")
        return self.num_workers

    def optimizer_options(self) -> dict[str, Any]:
        """The keywords of `psa_core.training.build_optimizer`."""
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "poly_power": self.poly_power,
        }


_INIT_FROM_CAM = (
    f"cam (the trained CAM network's backbone), null (from scratch), {_INIT_FROM_IMAGENET}."
)


@dataclasses.dataclass(frozen=True)
class CamSettings(TrainSettings):
    """Training of the classification network (docs/design.md §1.1)."""

    source: str = setting(
        "trained",
        "trained = train the classifier and infer its CAMs; external = read CAMs another "
        "method made from cam.external_dir (psa_core/cam_files.py).",
        cli=False,
        enum=["trained", "external"],
    )
    external_dir: str | None = setting(
        None, "Folder of NAME.npz CAM files, for cam.source external.", cli=False
    )
    batch_size: int = setting(16, "Images per SGD step (published 16).", minimum=1)
    epochs: int = setting(15, "Training epochs (published 15).", minimum=1)
    lr: float = setting(0.1, "Base learning rate (published 0.1).", **_POSITIVE)
    resize_long: tuple[int, int] = setting(
        (256, 512),
        "Range of the random long-side resize (published [256, 512]).",
        items={"minimum": 8},
    )
    wide_field_share: float = setting(
        0.0,
        "tiny backbone only: share of the training steps run with blocks 5 and 6 dilated "
        "(2 and 4, a 239 px field) before it finishes undilated (111 px). From scratch, the "
        "wide field can learn classes told only by a fine pattern, the narrow one keeps the "
        "CAMs on the objects; not reliably (benchmarks/RESULTS.md). 0 = undilated throughout "
        "(not part of PSA).",
        minimum=0,
        exclusiveMaximum=1,
    )

    attempts: int = setting(
        1,
        "Trainings of the classifier at most: while the final loss (val when there is a "
        "val split) stays above cam.retry_above of a constant guess's, it trains again from "
        "new weights at the next seed (seed + 1, ...), and the attempt with the lowest loss "
        "is kept. From scratch, whether a classifier leaves the chance plateau can depend on "
        "the seed (benchmarks/RESULTS.md). 1 = one training (not part of PSA).",
        minimum=1,
    )
    retry_above: float = setting(
        CHANCE_SHARE,
        "Share of a constant guess's loss (the class frequencies) above which a classifier "
        "counts as not learned, for cam.attempts; the default is where the summary says it "
        "learned next to nothing.",
        exclusiveMinimum=0,
        maximum=1,
    )

    def __post_init__(self) -> None:
        _check_range("resize_long", self.resize_long)


@dataclasses.dataclass(frozen=True)
class CamInferSettings:
    """Multi-scale CAM inference (docs/design.md §1.1)."""

    scales: tuple[float, ...] = setting(
        (1.0, 0.5, 1.5, 2.0),
        "Inference scales, each with its horizontal flip.",
        minItems=1,
        items=_POSITIVE,
    )
    dtype: str = setting(
        "float16",
        "Storage type of the CAM maps in the HDF5 shards.",
        enum=["float16", "float32"],
    )


@dataclasses.dataclass(frozen=True)
class CamEvaluateSettings:
    """CAM as a segmentation: the published background score and the sweep (§1.1, §1.5)."""

    bg_threshold: float = setting(
        0.2,
        "Background score that turns CAMs into a segmentation (published 0.2).",
        **_UNIT,
    )
    thresholds: tuple[float, ...] = setting(
        (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6),
        "Background thresholds swept in the evaluation.",
        minItems=1,
        items=_UNIT,
    )


@dataclasses.dataclass(frozen=True)
class CrfSettings:
    """Affinity labels from CAMs through the dense CRF (docs/design.md §1.2)."""

    alpha_low: float = setting(
        4.0,
        "Exponent of the low-alpha background (1 - max cam)^alpha (published 4; the seed note "
        "says 8).",
        **_POSITIVE,
    )
    alpha_high: float = setting(
        32.0, "Exponent of the high-alpha background (published 32).", **_POSITIVE
    )
    iterations: int = setting(10, "Mean-field iterations of the dense CRF.", minimum=1)
    gaussian_sxy: float = setting(
        3.0, "Spatial std of the Gaussian (smoothness) kernel, pixels.", **_POSITIVE
    )
    gaussian_compat: float = setting(3.0, "Weight of the Gaussian kernel.", minimum=0)
    bilateral_sxy: float = setting(
        80.0, "Spatial std of the bilateral (appearance) kernel, pixels.", **_POSITIVE
    )
    bilateral_srgb: float = setting(
        13.0, "Colour std of the bilateral kernel, 0-255 RGB.", **_POSITIVE
    )
    bilateral_compat: float = setting(10.0, "Weight of the bilateral kernel.", minimum=0)
    dtype: str = setting(
        "float16",
        "Storage type of the CRF score stacks in the HDF5 shards.",
        enum=["float16", "float32"],
    )
    workers: int = setting(
        1,
        "Processes per crf_labels job (the job's threads; shards also run in parallel).",
        minimum=1,
    )

    def __post_init__(self) -> None:
        if self.alpha_low > self.alpha_high:
            raise ValueError(
                f"alpha_low {self.alpha_low} > alpha_high {self.alpha_high}: the low-alpha "
                "background must be the stronger one; swap them"
            )

    def kernel_options(self) -> dict[str, Any]:
        """The keywords of `psa_core.crf.crf_inference`: iterations and the two kernels."""
        return {
            name: getattr(self, name)
            for name in (
                "iterations",
                "gaussian_sxy",
                "gaussian_compat",
                "bilateral_sxy",
                "bilateral_srgb",
                "bilateral_compat",
            )
        }


@dataclasses.dataclass(frozen=True)
class AffinitySettings(TrainSettings):
    """AffinityNet training (docs/design.md §1.3); the reference does no random resize."""

    init_weights: str | None = setting("cam", _INIT_FROM_CAM, cli=False)
    batch_size: int = setting(8, "Images per SGD step (published 8).", minimum=1)
    epochs: int = setting(8, "Training epochs (published 8).", minimum=1)
    lr: float = setting(0.1, "Base learning rate (published 0.1).", **_POSITIVE)
    crop_size: int = setting(
        448,
        "Random crop side (published 448); at least 72 px, the 5 x 9 cells of one radius-5 "
        "pair row.",
        minimum=72,
    )
    radius: int = setting(
        5,
        "Pair radius in stride-8 cells (published 5: 34 offsets); the random walk uses the same.",
        minimum=2,
    )


@dataclasses.dataclass(frozen=True)
class RandomWalkSettings:
    """Random walk of the CAMs over AffinityNet's affinities (docs/design.md §1.4)."""

    alpha: float = setting(
        16.0, "Background exponent of the walk's input (1 - max cam)^alpha (published 16).",
        **_POSITIVE,
    )  # fmt: skip
    beta: float = setting(8.0, "Exponent applied to the affinities (published 8).", **_POSITIVE)
    logt: int = setting(
        8, "log2 of the number of walk steps (published 8: 256 steps).", minimum=0, maximum=16
    )
    crf: bool = setting(
        False,
        "Refine the walk's masks with the dense CRF (PSA's kernels), as the paper's "
        "synthesized labels (CAM + RW + dCRF); the published code does not.",
    )


@dataclasses.dataclass(frozen=True)
class RandomWalkEvaluateSettings:
    """Background exponents the walk's evaluation sweeps over the stored affinities."""

    alphas: tuple[float, ...] = setting(
        (2.0, 4.0, 8.0, 16.0, 24.0, 32.0),
        "Background exponents swept in the evaluation (no network pass; the stored affinities "
        "are reused).",
        minItems=1,
        items=_POSITIVE,
    )


@dataclasses.dataclass(frozen=True)
class SegmentationSettings(TrainSettings):
    """The segmentation network trained on the random-walk masks (docs/design.md §1.6):
    DeepLab-LargeFOV's solver (12 epochs of VOC's train_aug ≈ its 6,000 iterations)."""

    init_weights: str | None = setting("cam", _INIT_FROM_CAM, cli=False)
    dilation: int = setting(
        12, "Rate of the head's dilated 3x3 conv (DeepLab-LargeFOV 12).", minimum=1
    )
    batch_size: int = setting(20, "Images per SGD step (DeepLab-LargeFOV 20).", minimum=1)
    epochs: int = setting(
        12,
        "Training epochs (12 epochs of train_aug: about DeepLab-LargeFOV's 6,000 iterations).",
        minimum=1,
    )
    lr: float = setting(
        0.001, "Base learning rate (DeepLab-LargeFOV 1e-3; 10x / 20x on the head).", **_POSITIVE
    )
    momentum: float = setting(
        0.9, "SGD momentum (DeepLab-LargeFOV 0.9).", minimum=0, exclusiveMaximum=1
    )
    crop_size: int = setting(321, "Random crop side (DeepLab-LargeFOV 321).", minimum=8)
    resize_long: tuple[int, int] = setting(
        (256, 512), "Range of the random long-side resize.", items={"minimum": 8}
    )

    def __post_init__(self) -> None:
        _check_range("resize_long", self.resize_long)


@dataclasses.dataclass(frozen=True)
class SegmentationInferSettings:
    """Segmentation-network inference (docs/design.md §1.6): softmax averaged over scales
    and flips."""

    scales: tuple[float, ...] = setting(
        (0.5, 0.75, 1.0, 1.25, 1.5),
        "Inference scales; the softmax is averaged over them.",
        minItems=1,
        items=_POSITIVE,
    )
    flip: bool = setting(True, "Also average over the mirror images.")
    crf: bool = setting(False, "Dense-CRF post-processing of the probabilities (PSA's kernels).")
    batch_size: int = setting(
        4, "Images of one size per forward pass (fewer when larger than 512x512 px).", minimum=1
    )


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """What `snakemake --report` shows."""

    gallery_size: int = setting(6, "Examples per split in the gallery.", minimum=1, maximum=64)


SECTIONS: dict[str, type] = {
    "": RunSettings,
    "dataset": DatasetSettings,
    "synthetic": SyntheticSettings,
    "model": ModelSettings,
    "cam": CamSettings,
    "cam.infer": CamInferSettings,
    "cam.evaluate": CamEvaluateSettings,
    "crf": CrfSettings,
    "affinity": AffinitySettings,
    "random_walk": RandomWalkSettings,
    "random_walk.evaluate": RandomWalkEvaluateSettings,
    "segmentation": SegmentationSettings,
    "segmentation.infer": SegmentationInferSettings,
    "report": ReportSettings,
}
"""Config section (dotted path; "" = the top-level keys) → its dataclass."""

SECTION_DESCRIPTIONS = {
    "crf": "Affinity labels from CAMs through the dense CRF (docs/design.md 1.2).",
    "affinity": "AffinityNet training (docs/design.md 1.3).",
    "random_walk": "Random walk of the CAMs over AffinityNet's affinities (docs/design.md 1.4).",
    "segmentation": "The segmentation network trained on the random-walk masks of the "
    "training split (docs/design.md 1.6).",
}


def _check_range(name: str, pair: tuple[int, int]) -> None:
    low, high = pair
    if low > high:
        raise ValueError(f"[{low}, {high}] has min > max; {name} is [min, max]")


# -- what a `psa` command takes of a section -----------------------------------------------
# Markers for `typing.Annotated` in the drivers' signatures: the CLI reads them.


@dataclasses.dataclass(frozen=True)
class Keys:
    """Only these keys of the section are the command's options (`Annotated[RunSettings,
    Keys("device", "amp")]`); the others keep their defaults."""

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "names", names)


@dataclasses.dataclass(frozen=True)
class Overrides:
    """The driver gets the values given for section `path` as a dict, not a section object
    (it completes them itself, e.g. from a model's recorded settings)."""

    path: str


@dataclasses.dataclass(frozen=True)
class Recorded:
    """The driver gets every setting given with `--settings`, to record it."""


# -- fields and types ----------------------------------------------------------------


class Setting(typing.NamedTuple):
    """One field of a section: name, resolved type, default, description, and the rest."""

    name: str
    type: Any
    default: Any
    description: str
    cli: bool
    schema: Mapping[str, Any]


def fields(cls: type) -> list[Setting]:
    """The settings of a section class, in declaration order."""
    hints = _hints(cls)
    return [
        Setting(
            f.name,
            hints[f.name],
            f.default,
            f.metadata["description"],
            f.metadata["cli"],
            f.metadata["schema"],
        )
        for f in dataclasses.fields(cls)
    ]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unoptional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def field_type(cls: type, name: str) -> Any:
    """The resolved annotation of field `name` of section class `cls`."""
    return _hints(cls)[name]


def is_optional(tp: Any) -> bool:
    """Whether a field of type `tp` may be null."""
    return _unoptional(tp)[1]


def group_class(tp: Any) -> type | None:
    """The dataclass of a group-typed field (e.g. `ColorJitter`: one object in YAML), or None."""
    base = _unoptional(tp)[0]
    return base if dataclasses.is_dataclass(base) else None


# -- the JSON schema -------------------------------------------------------------------

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def scalar_union(tp: Any) -> list[type]:
    """The scalar types of a union of two or more of them (`int | str`), else []."""
    if not (isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union):
        return []
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args if len(args) > 1 and all(a in _JSON_TYPES for a in args) else []


def _value_schema(tp: Any) -> dict[str, Any]:
    base, optional = _unoptional(tp)
    if scalar_union(tp):
        schema = {"type": [_JSON_TYPES[a] for a in scalar_union(tp)]}
    elif dataclasses.is_dataclass(base):
        schema = _object_schema(base)
    elif typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            schema = {"type": "array", "items": _value_schema(args[0])}
        else:
            schema = {
                "type": "array",
                "items": _value_schema(args[0]),
                "minItems": len(args),
                "maxItems": len(args),
            }
    else:
        schema = {"type": _JSON_TYPES[base]}
    if optional:
        schema["type"] = [*_as_list(schema["type"]), "null"]
    return schema


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _merge(schema: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(schema.get(key), dict):
            schema[key] = {**schema[key], **value}
        else:
            schema[key] = value
    return schema


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return as_dict(value)
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def _object_schema(cls: type, path: str | None = None) -> dict[str, Any]:
    """The object schema of a section (`path`) or of a value group (`path` None)."""
    properties: dict[str, Any] = {}
    for f in fields(cls):
        schema = _merge(_value_schema(f.type), f.schema)
        schema["default"] = _json_value(f.default)
        schema["description"] = f.description
        properties[f.name] = schema
    for name in _subsection_names(path) if path is not None else ():
        sub = f"{path}.{name}" if path else name
        properties[name] = _object_schema(SECTIONS[sub], sub)
        properties[name]["default"] = {}
        properties[name]["description"] = _description(sub, SECTIONS[sub])
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _description(path: str, cls: type) -> str:
    return SECTION_DESCRIPTIONS.get(path) or (cls.__doc__ or "").strip().splitlines()[0]


@functools.cache
def config_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of config.yaml, generated from the sections."""
    schema = _object_schema(RunSettings, "")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "Configuration of the PSA pipeline (config.yaml). Defaults are the "
        "published PSA values (docs/design.md); config.yaml runs the CPU demo.",
        **schema,
    }


def section_schema(path: str) -> dict[str, Any]:
    """The schema of one section (dotted path), as nested in `config_schema`."""
    node = config_schema()
    for key in filter(None, path.split(".")):
        node = node["properties"][key]
    return node


def typed_strings(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with strings read as YAML where the schema wants no string there.

    Snakemake reads every value nested in `--config 'cam={epochs: 3}'` as a
    string ('3'); read so, a nested override could never pass the schema.
    A string that does not read as a value of the wanted type stays as it
    was, for `config_errors` to name.
    """
    import yaml

    def typed(node: dict[str, Any], value: Any) -> Any:
        if isinstance(value, Mapping):
            properties = node.get("properties", {})
            return {k: typed(properties.get(k, {}), v) for k, v in value.items()}
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            return [typed(node["items"], v) for v in value]
        wanted = node.get("type")
        wanted = [wanted] if isinstance(wanted, str) else wanted or []
        if isinstance(value, str) and wanted and "string" not in wanted:
            try:
                return yaml.safe_load(value)
            except yaml.YAMLError:
                return value
        if isinstance(value, str) and "integer" in wanted and value.strip().isdigit():
            return int(value)  # a count or a word (num_workers: 2 or auto)
        return value

    return typed(config_schema(), config)


def output_dir_error(
    output_dir: str, workdir: Path, checkout: Path, dataset_root: str | None = None
) -> str | None:
    """Why `output_dir` (relative to `workdir`) is no place for artifacts, or None.

    Refused: the working folder itself or a folder above it (artifacts would
    mix with the user's files, and a clean-up would take those too), the
    checkout or a folder above it, the checkout's own folders, and the dataset
    folder or anything inside it (a replaced output folder could take its
    masks or lists with it).
    """
    target = (workdir / output_dir).resolve()
    if dataset_root is not None:
        root = (workdir / dataset_root).resolve()
        if target == root or root in target.parents:
            return (
                f"'{output_dir}' is inside the dataset folder '{dataset_root}'; keep the "
                "artifacts outside the dataset"
            )
    workdir, checkout = workdir.resolve(), checkout.resolve()
    if target == workdir or target in workdir.parents:
        return (
            f"'{output_dir}' is the working folder {workdir} (or above it): artifacts would "
            "mix with your files; give a folder of its own, e.g. results"
        )
    if target == checkout or target in checkout.parents:
        return f"'{output_dir}' holds the pipeline's checkout {checkout}; give another folder"
    for own in ("psa_core", "workflow", "tests", "docs", "benchmarks", "envs", ".git"):
        if target.is_relative_to(checkout / own):
            return f"'{output_dir}' is inside the pipeline's own folder {checkout / own}"
    if target.is_relative_to(workdir / ".snakemake"):
        return f"'{output_dir}' is inside Snakemake's own folder .snakemake"
    return None


def config_file_error(path: str | os.PathLike) -> str | None:
    """Why a config file is unusable, naming it (and the line and column of a YAML error),
    or None. Snakemake's own messages for these name no file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path}: cannot read it ({exc}); save it as UTF-8 text"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return f"{path}{where}: not valid YAML ({problem}); fix that line"
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {type(data).__name__}, not keys"
        return f"{path}: is {found}; a config file maps keys to values (see psa config-schema)"
    return None


def config_errors(config: Mapping[str, Any]) -> list[str]:
    """One line per schema violation of a config mapping, naming the key; [] when valid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.path])
    return [f"key '{_dotted(e.path)}': {e.message}" for e in errors]


def _dotted(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


# -- reading and writing values ---------------------------------------------------------


def as_dict(obj: Any) -> dict[str, Any]:
    """A section's values as JSON-able plain data (tuples become lists)."""
    return {f.name: _json_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    base, optional = _unoptional(tp)
    if value is None:
        if optional:
            return None
        raise PsaError(f"settings: key '{key}': null is not allowed; give a value")
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, Mapping):
            raise PsaError(f"settings: key '{key}': expected a mapping of {_names(base)}")
        return build(base, value, key)
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        item = args[0]
        return tuple(_coerce(item, v, key) for v in value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _names(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def build(cls: type, values: Mapping[str, Any], path: str = "") -> Any:
    """A section object from plain values (defaults for the missing ones).

    Raises PsaError naming the key for an unknown key or a value the section
    refuses (its ordered pairs).
    """
    known = {f.name: f for f in dataclasses.fields(cls)}
    subsections = _subsection_names(path)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{path}.{key}" if path else key
        if key in subsections:
            continue
        if key not in known:
            raise PsaError(
                f"settings: unknown key '{dotted}'; the keys of "
                f"{path or 'the top level'} are: {_names(cls)}"
            )
        kwargs[key] = _coerce(field_type(cls, key), value, dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PsaError(f"settings: section '{path or '(top level)'}': {exc}") from None


def _subsection_names(path: str) -> list[str]:
    """The names of the sections nested directly in section `path`, in `SECTIONS` order."""
    names = []
    for sub in SECTIONS:
        parent, _, name = sub.rpartition(".")
        if sub and parent == path:
            names.append(name)
    return names


def section_values(config: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The values of section `path` in a config-shaped mapping, without its subsections."""
    node: Any = config
    for key in filter(None, path.split(".")):
        node = node.get(key) or {}
        if not isinstance(node, Mapping):
            raise PsaError(f"settings: key '{path}': expected a mapping of settings")
    subsections = _subsection_names(path)
    return {k: v for k, v in node.items() if k not in subsections}


def section_from(path: str, values: Mapping[str, Any]) -> Any:
    """The section object `path` from its values, checked against the schema's rules too.

    Raises PsaError naming the first bad key (`settings: key 'cam.lr': ...`).
    """
    import jsonschema

    obj = build(SECTIONS[path], values, path)
    schema = {**section_schema(path), "additionalProperties": True}
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(as_dict(obj))
    )
    if error is not None:
        key = ".".join(str(p) for p in (*filter(None, path.split(".")), *error.path))
        raise PsaError(f"settings: key '{key}': {error.message}")
    return obj


def section(config: Mapping[str, Any], path: str) -> Any:
    """The section object `path` of a config-shaped mapping (defaults for what it lacks)."""
    return section_from(path, section_values(config, path))


def check_top_level(config: Mapping[str, Any], where: str) -> None:
    """PsaError naming the first key of `config` that is no config key."""
    known = {s.name for s in fields(RunSettings)} | _top_sections()
    unknown = sorted(set(config) - known)
    if unknown:
        raise PsaError(
            f"{where}: unknown key '{unknown[0]}'; the top-level keys are: {', '.join(sorted(known))}"
        )


def complete_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with every section and key present: the defaults filled in, JSON-able.

    Raises PsaError for a value a section refuses (e.g. an ordered pair in
    the wrong order); check `config_errors` first for the schema's rules.
    """
    complete: dict[str, Any] = {}
    for path in sorted(SECTIONS, key=lambda p: p.count(".")):
        values = as_dict(section(config, path))
        if path == "":
            complete.update(values)
            continue
        parent, _, name = path.rpartition(".")
        node = complete
        for key in filter(None, parent.split(".")):
            node = node[key]
        node[name] = values
    return complete


def _top_sections() -> set[str]:
    return {p for p in SECTIONS if p and "." not in p}


def job_settings(config: Mapping[str, Any], *picks: str) -> str:
    """What a rule hands its job: the picked sections of `config`, config-shaped, as JSON.

    A pick is a section path ("cam", "cam.infer", "" for the run keys), a
    path with chosen keys ("dataset:classes", ":device,amp") or with keys left
    out ("crf:-workers"). Subsections are left out of their parent: each is
    picked on its own, so a job reruns only when a value it reads changes.
    """
    picked: dict[str, Any] = {}
    for pick in picks:
        path, _, keys = pick.partition(":")
        values = as_dict(section(config, path))
        if keys.startswith("-"):
            values = {k: v for k, v in values.items() if k not in keys[1:].split(",")}
        elif keys:
            values = {k: values[k] for k in keys.split(",")}
        node = picked
        for key in filter(None, path.split(".")):
            node = node.setdefault(key, {})
        node.update(values)
    return json.dumps(picked, sort_keys=True)


def read_settings(value: str | Path | None) -> dict[str, Any]:
    """The `--settings` value of a `psa` command: a JSON object, or a JSON / YAML file
    shaped like config.yaml (other sections than the command's are ignored)."""
    if value is None:
        return {}
    text = str(value)
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PsaError(f"--settings: not a JSON object ({exc}); pass JSON or a file") from None
    else:
        path = Path(text)
        if not path.is_file():
            raise PsaError(f"--settings {path}: no such file; pass a JSON/YAML file or JSON")
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PsaError(f"{path}: not valid YAML/JSON ({exc}); fix the file") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PsaError(f"--settings {text[:60]}: not a mapping of config keys")
    return dict(data)
