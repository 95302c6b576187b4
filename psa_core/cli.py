"""The `psa` console script (also `python -m psa_core`): one subcommand a stage step.

The CLI only parses and dispatches: each subcommand names its driver in
`psa_core.stages` and calls it with the options as keyword arguments. Option
defaults come from `psa_core.defaults`. It never reads config.yaml: the
Snakemake rules pass every value. User errors (`PsaError`) print one line and
exit 2; an interrupted training exits 128 + signal.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from psa_core import __version__
from psa_core.defaults import (
    AFFINITY_RADIUS,
    AFFINITY_TRAIN,
    CAM_EVALUATE,
    CAM_INFER,
    CAM_TRAIN,
    CRF,
    JITTER_KEYS,
    RANDOM_WALK,
    RANDOM_WALK_EVALUATE,
    REPORT,
    SEGMENTATION_DILATION,
    SEGMENTATION_INFER,
    SEGMENTATION_TRAIN,
    SYNTHETIC,
    TrainDefaults,
)
from psa_core.errors import PsaError, TrainingInterrupted

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _driver(spec: str) -> Callable[..., None]:
    """'module:function' → the stage driver (imported late: `psa --help` needs no torch)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psa",
        description="PSA / AffinityNet pipeline stages (the Snakemake rules call these).",
    )
    parser.add_argument("--version", action="version", version=f"psa_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, driver: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(driver=driver)
        return p

    p = add(
        "synth", "psa_core.stages.data:synth", "generate the synthetic dataset in the VOC layout"
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=SYNTHETIC.seed)
    p.add_argument("--num-train", type=int, default=SYNTHETIC.num_train)
    p.add_argument("--num-val", type=int, default=SYNTHETIC.num_val)
    p.add_argument(
        "--image-size", type=int, nargs=2, default=SYNTHETIC.image_size, metavar=("MIN", "MAX")
    )
    p.add_argument("--num-classes", type=int, default=SYNTHETIC.num_classes)

    p = add("index", "psa_core.stages.data:index", "list a split's images and image-level labels")
    p.add_argument("--root", type=Path, required=True, help="dataset folder (VOC layout)")
    p.add_argument("--split", required=True, help="split name, e.g. train, val, train_aug")
    p.add_argument("--classes", type=_comma_list, default=None, help="comma-separated class names")
    _shard_args(p)
    p.add_argument("--out-images", type=Path, required=True, help="image list to write (.txt)")
    p.add_argument("--out-labels", type=Path, required=True, help="labels to write (.json)")

    p = add("train-cam", "psa_core.stages.cam:train_cam", "train the classifier (resumable)")
    _data_args(p)
    _model_args(p)
    _train_args(p, CAM_TRAIN)
    p.add_argument("--val-images", type=Path, default=None, help="images for a validation loss")
    p.add_argument("--val-labels", type=Path, default=None, help="their labels (.json)")
    _runtime_args(p)

    p = add(
        "infer-cam",
        "psa_core.stages.cam:infer_cam",
        "multi-scale CAMs of an image list, or of one shard of it (HDF5)",
    )
    _data_args(p)
    _model_args(p, weights="trained CAM weights (.pt/.pth)")
    _shard_args(p)
    p.add_argument("--scales", type=float, nargs="+", default=CAM_INFER.scales)
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default=CAM_INFER.dtype)
    _runtime_args(p)
    p.add_argument("--out", type=Path, required=True, help="HDF5 shard to write")

    p = add("evaluate-cam", "psa_core.stages.cam:evaluate_cam", "CAM mIoU over a threshold sweep")
    _data_args(p)
    p.add_argument("--cams", type=Path, nargs="+", required=True, help="HDF5 CAM shards")
    p.add_argument("--thresholds", type=float, nargs="+", default=CAM_EVALUATE.thresholds)
    p.add_argument("--bg-threshold", type=float, default=CAM_EVALUATE.bg_threshold)
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-svg", type=Path, required=True)

    p = add(
        "crf-labels",
        "psa_core.stages.affinity:crf_labels",
        "dense-CRF score stacks (low / high alpha) and label maps of one CAM shard",
    )
    _data_args(p)
    p.add_argument("--cams", type=Path, required=True, help="the shard's CAMs (HDF5)")
    p.add_argument("--alpha-low", type=float, default=CRF.alpha_low)
    p.add_argument("--alpha-high", type=float, default=CRF.alpha_high)
    p.add_argument("--iterations", type=int, default=CRF.iterations, help="mean-field steps")
    p.add_argument("--gaussian-sxy", type=float, default=CRF.gaussian_sxy)
    p.add_argument("--gaussian-compat", type=float, default=CRF.gaussian_compat)
    p.add_argument("--bilateral-sxy", type=float, default=CRF.bilateral_sxy)
    p.add_argument("--bilateral-srgb", type=float, default=CRF.bilateral_srgb)
    p.add_argument("--bilateral-compat", type=float, default=CRF.bilateral_compat)
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default=CRF.dtype)
    p.add_argument("--workers", type=int, default=CRF.workers, help="processes over the images")
    p.add_argument("--out", type=Path, required=True, help="HDF5 shard of score stacks to write")
    p.add_argument("--out-maps", type=Path, required=True, help="folder of label-map PNGs to write")

    p = add(
        "evaluate-crf-labels",
        "psa_core.stages.affinity:evaluate_crf_labels",
        "score the CRF label maps (confident fg / bg, uncertain) against ground truth",
    )
    _data_args(p)
    p.add_argument("--crf", type=Path, nargs="+", required=True, help="HDF5 CRF shards")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)

    p = add(
        "train-affinity",
        "psa_core.stages.affinity:train_affinity",
        "train AffinityNet on the CRF labels (resumable)",
    )
    _data_args(p)
    p.add_argument("--crf", type=Path, nargs="+", required=True, help="HDF5 CRF shards")
    _model_args(p)
    _train_args(p, AFFINITY_TRAIN)
    p.add_argument("--radius", type=int, default=AFFINITY_RADIUS, help="pair radius (cells)")
    _runtime_args(p)

    p = add(
        "random-walk",
        "psa_core.stages.random_walk:random_walk_shard",
        "propagate one CAM shard over AffinityNet's affinities into masks",
    )
    _data_args(p)
    p.add_argument("--cams", type=Path, required=True, help="the shard's CAMs (HDF5)")
    _model_args(p, weights="trained AffinityNet weights (.pt/.pth)")
    p.add_argument("--radius", type=int, default=AFFINITY_RADIUS, help="pair radius (cells)")
    _walk_args(p)
    _runtime_args(p)
    p.add_argument("--out", type=Path, required=True, help="HDF5 shard of walked scores")
    p.add_argument("--out-affinity", type=Path, required=True, help="HDF5 shard of affinities")
    p.add_argument("--out-masks", type=Path, required=True, help="folder of mask PNGs")

    p = add(
        "evaluate-random-walk",
        "psa_core.stages.random_walk:evaluate_random_walk",
        "mIoU of the random-walk masks, with a sweep over the walk's alpha",
    )
    _data_args(p)
    p.add_argument("--walks", type=Path, nargs="+", required=True, help="walked-score shards")
    p.add_argument("--affinities", type=Path, nargs="+", required=True, help="affinity shards")
    p.add_argument("--cams", type=Path, nargs="+", required=True, help="CAM shards")
    _walk_args(p)
    p.add_argument("--alphas", type=float, nargs="+", default=RANDOM_WALK_EVALUATE.alphas)
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-plot", type=Path, required=True, help="sweep plot (.svg or .png)")

    p = add(
        "export-masks",
        "psa_core.stages.random_walk:export_masks",
        "a split's random-walk masks as a VOC-style folder for segmentation trainers",
    )
    p.add_argument("--root", type=Path, required=True, help="dataset folder (VOC layout)")
    p.add_argument("--images", type=Path, required=True, help="image list from `psa index`")
    p.add_argument("--split", required=True, help="name of the list file to write")
    p.add_argument("--masks", type=Path, nargs="+", required=True, help="mask folders")
    p.add_argument("--out", type=Path, required=True, help="folder to create")

    p = add(
        "train-seg",
        "psa_core.stages.segmentation:train_seg",
        "train the segmentation network on a split's masks (resumable)",
    )
    _data_args(p)
    p.add_argument("--masks", type=Path, required=True, help="folder of NAME.png training masks")
    _model_args(p)
    p.add_argument("--dilation", type=int, default=SEGMENTATION_DILATION, help="head's 3x3 rate")
    _train_args(p, SEGMENTATION_TRAIN)
    _runtime_args(p)

    p = add(
        "package-seg-model",
        "psa_core.stages.segmentation:package_seg_model",
        "a model folder (weights.pt + model.json) for psa predict, from trained weights",
    )
    p.add_argument("--weights", type=Path, required=True, help="weights from train-seg (.pt)")
    p.add_argument("--labels", type=Path, required=True, help="labels from `psa index` (classes)")
    p.add_argument("--backbone", default="tiny", help="resnet38d, vgg16d or tiny")
    p.add_argument("--dilation", type=int, default=SEGMENTATION_DILATION, help="head's 3x3 rate")
    _seg_infer_args(p, recorded=False)
    p.add_argument("--settings", default=None, help="JSON object recorded in model.json")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")

    p = add(
        "infer-seg",
        "psa_core.stages.segmentation:infer_seg",
        "masks of a list of images (or one shard of it) from a segmentation model folder",
    )
    p.add_argument("--root", type=Path, required=True, help="dataset folder (VOC layout)")
    p.add_argument("--images", type=Path, required=True, help="image list from `psa index`")
    p.add_argument("--model", type=Path, required=True, help="model folder from package-seg-model")
    _shard_args(p)
    _seg_infer_args(p, recorded=False)
    p.add_argument("--batch-size", type=int, default=SEGMENTATION_INFER.batch_size)
    _runtime_args(p)
    p.add_argument("--out-masks", type=Path, required=True, help="folder of mask PNGs to write")

    p = add(
        "evaluate-seg",
        "psa_core.stages.segmentation:evaluate_seg",
        "mIoU of the segmentation network's masks",
    )
    _data_args(p)
    p.add_argument("--masks", type=Path, nargs="+", required=True, help="mask folders")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)

    p = add(
        "predict",
        "psa_core.stages.segmentation:predict",
        "segment any images with a trained model folder (no labels, no Snakemake)",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder from package-seg-model")
    p.add_argument(
        "--images", type=Path, required=True, help="a folder of images, a list file or one image"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for NAME.png masks")
    p.add_argument(
        "--overlay",
        dest="overlay_images",
        action="store_true",
        help="also write NAME.jpg: the mask's colours over the image",
    )
    _seg_infer_args(p, recorded=True)
    p.add_argument("--batch-size", type=int, default=SEGMENTATION_INFER.batch_size)
    _runtime_args(p)

    p = add(
        "summarize",
        "psa_core.stages.random_walk:summarize",
        "one table of CAM -> CRF labels -> random walk (-> segmentation network) mIoU per split",
    )
    p.add_argument("--splits", nargs="+", required=True)
    p.add_argument("--cam", type=Path, nargs="+", required=True, help="CAM evaluations (.json)")
    p.add_argument("--crf", type=Path, nargs="+", required=True, help="CRF evaluations (.json)")
    p.add_argument("--walk", type=Path, nargs="+", required=True, help="walk evaluations (.json)")
    p.add_argument(
        "--seg", type=Path, nargs="+", default=None, help="segmentation evaluations (.json)"
    )
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)

    p = add(
        "gallery",
        "psa_core.stages.report:gallery",
        "examples side by side: image, ground truth, CAM, CRF labels, random-walk mask",
    )
    _data_args(p)
    p.add_argument("--cams", type=Path, nargs="+", required=True, help="CAM shards")
    p.add_argument("--crf", type=Path, nargs="+", required=True, help="CRF shards")
    p.add_argument("--masks", type=Path, nargs="+", required=True, help="random-walk mask folders")
    p.add_argument(
        "--seg-masks", type=Path, nargs="+", default=None, help="segmentation-network mask folders"
    )
    p.add_argument("--count", type=int, default=REPORT.gallery_size, help="examples to show")
    p.add_argument("--out", type=Path, required=True, help="picture to write (.png)")
    return parser


def _walk_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=RANDOM_WALK.alpha, help="background exponent")
    p.add_argument("--beta", type=float, default=RANDOM_WALK.beta, help="affinity exponent")
    p.add_argument("--logt", type=int, default=RANDOM_WALK.logt, help="log2 of the walk's steps")


STORAGE_DTYPES = ("float16", "float32")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="dataset folder (VOC layout)")
    p.add_argument("--images", type=Path, required=True, help="image list from `psa index`")
    p.add_argument("--labels", type=Path, required=True, help="labels from `psa index`")


def _model_args(p: argparse.ArgumentParser, weights: str | None = None) -> None:
    p.add_argument("--backbone", default="tiny", help="resnet38d, vgg16d or tiny")
    if weights:
        p.add_argument("--weights", type=Path, required=True, help=weights)
    else:
        p.add_argument(
            "--init", type=Path, default=None, help="initial weights (backbone only) or none"
        )


def _shard_args(p: argparse.ArgumentParser) -> None:
    """--shard N --shard-size S: one shard of the image list (both or neither; neither = all)."""
    p.add_argument(
        "--shard", type=int, default=None, help="only this shard of the list (0-based); default all"
    )
    p.add_argument("--shard-size", type=int, default=None, help="images per shard (with --shard)")


def _seg_infer_args(p: argparse.ArgumentParser, recorded: bool) -> None:
    """Scales, flip and CRF of segmentation inference; `recorded`: default to the model's."""
    defaults = SEGMENTATION_INFER
    model = " (default: the model's)" if recorded else ""
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None if recorded else defaults.scales,
        help=f"inference scales, each with its mirror image{model}",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None if recorded else defaults.flip,
        help=f"average with the mirror images{model}",
    )
    p.add_argument(
        "--crf",
        action=argparse.BooleanOptionalAction,
        default=None if recorded else defaults.crf,
        help=f"dense-CRF post-processing{model}",
    )


def _train_args(p: argparse.ArgumentParser, defaults: TrainDefaults) -> None:
    """The optimiser and augmentation options of a training stage, with its defaults."""
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--poly-power", type=float, default=defaults.poly_power)
    p.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    p.add_argument("--crop-size", type=int, default=defaults.crop_size)
    if defaults.resize_long is not None:
        p.add_argument(
            "--resize-long",
            type=int,
            nargs=2,
            default=defaults.resize_long,
            metavar=("LO", "HI"),
        )
    p.add_argument(
        "--color-jitter",
        type=float,
        nargs=4,
        default=defaults.color_jitter,
        metavar=tuple(key.upper() for key in JITTER_KEYS),
    )
    p.add_argument("--num-workers", type=int, default=defaults.num_workers)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, required=True, help="resume checkpoint path")
    p.add_argument(
        "--restart-on-change",
        action="store_true",
        help="start over when the checkpoint has other settings (default: refuse)",
    )
    p.add_argument("--out-log", type=Path, required=True, help="training log to write (.csv)")
    p.add_argument("--out", type=Path, required=True, help="trained weights to write (.pt)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--amp",
        choices=("none", "bfloat16", "float16"),
        default="none",
        help="autocast dtype of the forward passes (mixed precision)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class Terminated(BaseException):
    """Raised by the SIGTERM handler: unwinds the stage like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, then call the subcommand's stage driver with the options as keywords."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if os.environ.get("SLURM_JOB_ID"):
        logging.getLogger("psa").info(
            "running as SLURM job %s on %s",
            os.environ["SLURM_JOB_ID"],
            os.environ.get("SLURMD_NODENAME", "?"),
        )
    options = vars(args).copy()
    command, driver = options.pop("command"), options.pop("driver")
    _set_threads(options.pop("threads", None))
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C: temporary outputs are
    # removed and worker pools terminated. Training installs its own handler.
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _driver(driver)(**options)
    except PsaError as exc:
        print(f"psa {command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingInterrupted as exc:
        print(f"psa {command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated as exc:
        print(f"psa {command}: stopped by SIGTERM; no output was written", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"psa {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
