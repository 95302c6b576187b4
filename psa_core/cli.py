"""The `psa` console script (also `python -m psa_core`): one subcommand a stage.

Each subcommand parses explicit arguments, reads its inputs, calls the pure
functions of psa_core and writes its artifacts atomically. It never reads
config.yaml: the Snakemake rules pass every value. User errors (`PsaError`)
print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from psa_core import __version__
from psa_core.errors import PsaError, TrainingInterrupted

log = logging.getLogger("psa")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def cmd_synth(args: argparse.Namespace) -> None:
    from psa_core.data.synthetic import generate

    generate(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=tuple(args.image_size),
        num_classes=args.num_classes,
        seed=args.seed,
    )
    log.info("synthetic dataset written to %s", args.out)


def cmd_index(args: argparse.Namespace) -> None:
    from psa_core.data import index_split, read_classes, write_labels
    from psa_core.io import write_lines

    classes = read_classes(args.root, args.classes)
    labels = index_split(args.root, args.split, classes)
    write_labels(args.out_labels, classes, labels)
    write_lines(args.out_images, list(labels))
    log.info("split %s: %d images, %d classes", args.split, len(labels), len(classes))


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def cmd_train_cam(args: argparse.Namespace) -> None:
    import torch

    from psa_core.data import read_labels
    from psa_core.io import read_lines
    from psa_core.models import build_model
    from psa_core.models.weights import load_weights
    from psa_core.train import train_cam

    _set_threads(args.threads)
    classes, labels = read_labels(args.labels)
    names = read_lines(args.images)
    val_names = None
    if args.val_images:
        val_classes, val_labels = read_labels(args.val_labels or args.labels)
        if val_classes != classes:
            raise PsaError(
                f"{args.val_labels}: classes differ from {args.labels}; rerun `psa index`"
            )
        val_names = read_lines(args.val_images)
        labels = {**val_labels, **labels}
    torch.manual_seed(args.seed)  # new layers start the same in every run of a config
    model = build_model(args.backbone, "cam", num_classes=len(classes))
    if args.init:
        # The classifier layer is new for every run; the file gives the backbone.
        for note in load_weights(model, args.init, backbone_only=True):
            log.info("init weights: %s", note)
    train_cam(
        model,
        root=args.root,
        names=names,
        labels=labels,
        val_names=val_names,
        restart_on_change=args.restart_on_change,
        crop_size=args.crop_size,
        resize_long=tuple(args.resize_long),
        color_jitter=tuple(args.color_jitter),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        poly_power=args.poly_power,
        momentum=args.momentum,
        amp_dtype=args.amp,
        seed=args.seed,
        device=args.device,
        num_workers=args.num_workers,
        out_weights=args.out,
        checkpoint_path=args.checkpoint,
        log_csv=args.out_log,
        config={"init": str(args.init) if args.init else None},
    )


def cmd_infer_cam(args: argparse.Namespace) -> None:
    from psa_core.stages import infer_cam_shard

    _set_threads(args.threads)
    infer_cam_shard(
        root=args.root,
        images_list=args.images,
        labels_path=args.labels,
        weights=args.weights,
        backbone=args.backbone,
        shard=args.shard,
        shard_size=args.shard_size,
        scales=tuple(args.scales),
        dtype=args.dtype,
        device=args.device,
        amp=args.amp,
        out=args.out,
    )


def cmd_evaluate_cam(args: argparse.Namespace) -> None:
    from psa_core.stages import evaluate_cam_shards

    evaluate_cam_shards(
        root=args.root,
        images_list=args.images,
        labels_path=args.labels,
        shards=args.cams,
        thresholds=args.thresholds,
        bg_threshold=args.bg_threshold,
        out_json=args.out_json,
        out_csv=args.out_csv,
        out_svg=args.out_svg,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psa",
        description="PSA / AffinityNet pipeline stages (the Snakemake rules call these).",
    )
    parser.add_argument("--version", action="version", version=f"psa_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("synth", cmd_synth, "generate the synthetic dataset in the VOC layout")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=160)
    p.add_argument("--num-val", type=int, default=48)
    p.add_argument("--image-size", type=int, nargs=2, default=(96, 160), metavar=("MIN", "MAX"))
    p.add_argument("--num-classes", type=int, default=4)

    p = add("index", cmd_index, "list a split's images and their image-level labels")
    p.add_argument("--root", type=Path, required=True, help="dataset folder (VOC layout)")
    p.add_argument("--split", required=True, help="split name, e.g. train, val, train_aug")
    p.add_argument("--classes", type=_comma_list, default=None, help="comma-separated class names")
    p.add_argument("--out-images", type=Path, required=True, help="image list to write (.txt)")
    p.add_argument("--out-labels", type=Path, required=True, help="labels to write (.json)")

    def add_data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", type=Path, required=True, help="dataset folder (VOC layout)")
        p.add_argument("--images", type=Path, required=True, help="image list from `psa index`")
        p.add_argument("--labels", type=Path, required=True, help="labels from `psa index`")

    def add_runtime_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument(
            "--amp",
            choices=("none", "bfloat16", "float16"),
            default="none",
            help="autocast dtype of the forward passes (mixed precision)",
        )
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

    p = add("train-cam", cmd_train_cam, "train the classification network (resumable)")
    add_data_args(p)
    p.add_argument("--backbone", default="tiny", help="resnet38d, vgg16d or tiny")
    p.add_argument("--init", type=Path, default=None, help="initial weights file")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--crop-size", type=int, default=448)
    p.add_argument("--resize-long", type=int, nargs=2, default=(256, 512), metavar=("LO", "HI"))
    p.add_argument(
        "--color-jitter",
        type=float,
        nargs=4,
        default=(0.3, 0.3, 0.3, 0.1),
        metavar=("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"),
    )
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    add_runtime_args(p)
    p.add_argument("--val-images", type=Path, default=None, help="images for a validation loss")
    p.add_argument("--val-labels", type=Path, default=None, help="their labels (.json)")
    p.add_argument("--checkpoint", type=Path, required=True, help="resume checkpoint path")
    p.add_argument(
        "--restart-on-change",
        action="store_true",
        help="start over when the checkpoint has other settings (default: refuse)",
    )
    p.add_argument("--out-log", type=Path, required=True, help="training log to write (.csv)")
    p.add_argument("--out", type=Path, required=True, help="trained weights to write (.pt)")

    p = add("infer-cam", cmd_infer_cam, "multi-scale CAMs of one shard into an HDF5 file")
    add_data_args(p)
    p.add_argument("--weights", type=Path, required=True, help="trained CAM weights (.pt/.pth)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--shard", type=int, required=True, help="shard number (0-based)")
    p.add_argument("--shard-size", type=int, required=True)
    p.add_argument("--scales", type=float, nargs="+", default=(1.0, 0.5, 1.5, 2.0))
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    add_runtime_args(p)
    p.add_argument("--out", type=Path, required=True, help="HDF5 shard to write")

    p = add("evaluate-cam", cmd_evaluate_cam, "mIoU of CAMs over a background-threshold sweep")
    add_data_args(p)
    p.add_argument("--cams", type=Path, nargs="+", required=True, help="HDF5 CAM shards")
    p.add_argument("--thresholds", type=float, nargs="+", required=True)
    p.add_argument("--bg-threshold", type=float, default=0.2, help="the reported threshold")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-svg", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        args.func(args)
    except PsaError as exc:
        print(f"psa {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingInterrupted as exc:
        print(f"psa {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"psa {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
