"""Probe: can the from-scratch CAM classifier learn a dataset family at all, and where do
its CAMs land? (issue 17, item 2: one hypothesis a run.)

Trains the `tiny` CAM network in process on a generated family's train split with the
committed `config.yaml`'s `cam` section (`--family demo`: the demo's synthetic set, the
control) (plus `--set KEY=VALUE` overrides of that
section), then prints the final training and validation loss, the val CAM mIoU at
the published and the best background threshold, and where the CAMs land: the
share of (image, present class) pairs whose CAM peak is on an object of that class,
and the share of the class's CAM mass on its pixels. A `--variant` changes the network:

    default   the committed `tiny` backbone
    stem1     one stride-1 3x3 conv-BN-ReLU (16 channels) in front of the stride-2 stem,
              so that patterns finer than the first stride reach a layer at full
              resolution (hypothesis: the stride-2 first layer aliases them away)
    wide      `tiny` with width 64 (twice the channels; hypothesis: capacity)
    dil24     blocks 5 and 6 at dilation 2 and 4, as `tiny` had them before issue 17:
              receptive field 239 px instead of 111 px (the measured cause of CAMs
              spread off the objects: every CAM cell saw the whole image)
    dil12     blocks 5 and 6 at dilation 1 and 2: receptive field 175 px

`--dual-field` trains every step twice over the same weights, once at 111 px and once
at 239 px (blocks 5 and 6 at dilations 2 and 4), on the mean of the two losses; the
wide pass leaves the batch-norm running statistics as the narrow pass set them, and
the CAMs come from the 111 px net (hypothesis: the wide pass gives every cell the
object's evidence, the narrow pass keeps the maps local; no switch as in the warm-up):
measured on `hue` and dropped (benchmarks/RESULTS.md).

`--set wide_field_share=0.25` trains the first quarter of the steps at 239 px, then at
111 px (`cam.wide_field_share`, off in the committed config; it overrides a `dil*`
variant's dilations, and `--wide-dilations` its wide ones). `--pool` replaces the head's global average
pooling of the class scores (max, log-sum-exp, or the mean of the top share of cells):
measured and dropped (benchmarks/RESULTS.md).

`--family-set NAME=VALUE` changes a constant of the family's generator for this run
(`benchmarks/families.set_constants`), e.g. larger objects with coarser patterns.

    python benchmarks/cam_probe.py --family texture --variant default --epochs 20
    python benchmarks/cam_probe.py --family texture --variant stem1 --epochs 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.families import FAMILIES, set_constants  # noqa: E402
from psa_core import io, settings  # noqa: E402
from psa_core.cam import fit_cam, multiscale_cam  # noqa: E402
from psa_core.data import generate_synthetic, index_split, read_classes  # noqa: E402
from psa_core.evaluate import CamThresholdSweep, last_epoch_losses  # noqa: E402
from psa_core.models import create_model  # noqa: E402
from psa_core.models.tiny import TinyNet, _conv_norm_relu  # noqa: E402

DILATIONS = {"dil24": (2, 4), "dil12": (1, 2)}
"""Dilations of tiny's blocks 5 and 6 per variant (the committed net has 1 and 1)."""


def _variant(net: nn.Module, variant: str) -> nn.Module:
    if variant == "stem1":
        stem = net.backbone.stem
        first = stem[0][0]
        stem[0][0] = nn.Conv2d(16, first.out_channels, 3, 2, padding=1, bias=False)
        net.backbone.stem = nn.Sequential(_conv_norm_relu(3, 16, stride=1), *stem)
    elif variant in DILATIONS:
        net.backbone.set_dilations(DILATIONS[variant])
    elif variant not in ("default", "wide"):
        raise SystemExit(f"--variant {variant}: use default, stem1, wide, dil24 or dil12")
    return net


def _demo(root: Path, seed: int) -> None:
    """The demo's synthetic set with the committed config's `synthetic` section."""
    synthetic = yaml.safe_load((REPO / "config.yaml").read_text())["synthetic"]
    generate_synthetic(
        root,
        num_train=synthetic["num_train"],
        num_val=synthetic["num_val"],
        image_size=tuple(synthetic["image_size"]),
        num_classes=synthetic["num_classes"],
        seed=synthetic["seed"],
    )


def pooled_scores(scores: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, K, cells) class scores -> (B, K) image scores by `pool`: mean (the published
    global average pooling), max, lse:R (log-sum-exp at sharpness R) or topk:FRACTION
    (the mean of the top FRACTION of the cells)."""
    kind, _, arg = pool.partition(":")
    if kind == "mean":
        return scores.mean(2)
    if kind == "max":
        return scores.amax(2)
    if kind == "lse":
        r = float(arg)
        return (torch.logsumexp(r * scores, 2) - np.log(scores.shape[2])) / r
    if kind == "topk":
        k = max(1, int(np.ceil(float(arg) * scores.shape[2])))
        return scores.topk(k, dim=2).values.mean(2)
    raise SystemExit(f"--pool {pool}: use mean, max, lse:R or topk:FRACTION")


def _pooling(head: nn.Module, pool: str) -> None:
    """Replace the CAM head's global average pooling (of the class scores per cell)."""
    if pool == "mean":
        return

    def forward(feature: torch.Tensor) -> torch.Tensor:
        scores = nn.functional.conv2d(head.dropout7(feature), head.fc8.weight).flatten(2)
        return pooled_scores(scores, pool)

    head.forward = forward


def _dual_field(net: nn.Module) -> None:
    """`--dual-field`: replaces the CAM loss (`psa_core.cam.multilabel_soft_margin_loss`,
    which `fit_cam` looks up when called): in training, the mean of the loss of the
    narrow (as built) and of the wide net on the same batch. The wide pass keeps the
    narrow pass's batch-norm running statistics."""
    import psa_core.cam as cam_module

    backbone, loss = net.backbone, cam_module.multilabel_soft_margin_loss
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    narrow = backbone.dilations

    def dual_loss(model: nn.Module, batch: tuple) -> tuple[torch.Tensor, dict]:
        narrow_loss, _ = loss(model, batch)
        if not model.training:
            return narrow_loss, {}
        for m in norms:  # batch statistics, and the running ones left alone
            m.track_running_stats = False
        backbone.set_dilations(TinyNet.WIDE_DILATIONS)
        try:
            wide_loss, _ = loss(model, batch)
        finally:
            backbone.set_dilations(narrow)
            for m in norms:
                m.track_running_stats = True
        return (narrow_loss + wide_loss) / 2, {}

    cam_module.multilabel_soft_margin_loss = dual_loss


SETS = {**FAMILIES, "demo": _demo}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(SETS), default="texture")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=[], help="cam.KEY=VALUE (YAML values)")
    parser.add_argument(
        "--num-train", type=int, default=None, help="train images of a family (default its own)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and training")
    parser.add_argument(
        "--pool",
        default="mean",
        help="mean | max | lse:R | topk:FRACTION (the classifier's pooling)",
    )
    parser.add_argument(
        "--wide-dilations",
        type=int,
        nargs=2,
        default=None,
        help="dilations of blocks 5 and 6 during cam.wide_field_share (default 2 4)",
    )
    parser.add_argument("--dual-field", action="store_true", help="train at 111 and 239 px at once")
    parser.add_argument(
        "--family-set",
        nargs="*",
        default=[],
        help="NAME=VALUE: a module constant of the family's generator (YAML; a list gives a "
        "tuple), e.g. DIAMETER=[0.3, 0.6]: a variant of the family, for one measurement",
    )
    args = parser.parse_args(argv)
    if args.family_set:
        if args.family == "demo":
            raise SystemExit("--family-set: the demo has no generator constants")
        set_constants(args.family, args.family_set)
    if args.wide_dilations:
        TinyNet.WIDE_DILATIONS = tuple(args.wide_dilations)
    torch.set_num_threads(2)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    values = {**config["cam"], "epochs": args.epochs}
    for item in args.set:
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)
    values.pop("infer", None), values.pop("evaluate", None)
    cam = settings.section_from("cam", values)
    with tempfile.TemporaryDirectory(prefix="cam_probe_") as tmp:
        root = Path(tmp) / "data"
        if args.num_train and args.family != "demo":
            SETS[args.family](root, 0, num_train=args.num_train)
        else:
            SETS[args.family](root, 0)
        classes = read_classes(root)
        train = index_split(root, "train", classes)
        val = index_split(root, "val", classes)
        labels = {n: label for n, (label, _) in {**train, **val}.items()}
        images = {n: f.image for n, (_, f) in {**train, **val}.items()}
        width = {"width": 64} if args.variant == "wide" else {}
        net = create_model("tiny", "cam", len(classes), seed=args.seed, **width)
        net = _variant(net, args.variant)
        _pooling(net.head if hasattr(net, "head") else net, args.pool)
        if args.dual_field:
            _dual_field(net)
        start = time.perf_counter()
        fit_cam(
            net, images, list(train), labels, cam, seed=args.seed, val_names=list(val),
            device="cpu", out_weights=Path(tmp) / "w.pt",
            checkpoint_path=Path(tmp) / "c.pt", log_csv=Path(tmp) / "log.csv", progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        last = last_epoch_losses(Path(tmp) / "log.csv")
        net.eval()
        peaks: list[bool] = []  # per (image, present class): the CAM's peak on that class
        mass: list[float] = []  # share of the class's CAM mass on that class's pixels
        area: list[float] = []  # share of the image those pixels cover (chance level of mass)
        sweep = CamThresholdSweep(len(classes) + 1, [i / 20 for i in range(1, 13)])
        with torch.no_grad():
            for label, files in val.values():
                image = io.read_image(files.image)
                maps = multiscale_cam(net, image, label, scales=(1.0, 0.5, 1.5, 2.0))
                present = np.flatnonzero(label > 0)
                mask = io.read_mask(files.mask)
                sweep.add(maps[present], present, mask)
                for c in present:
                    on = mask == c + 1
                    peaks.append(bool(on.flat[int(np.argmax(maps[c]))]))
                    mass.append(float(maps[c][on].sum() / max(float(maps[c].sum()), 1e-9)))
                    area.append(float(on.mean()))
        result = sweep.result(0.2)
    at = next(row for row in result["thresholds"] if row["threshold"] == 0.2)
    print(
        f"localisation: peak on the object {100 * np.mean(peaks):.0f} %, CAM mass on it "
        f"{100 * np.mean(mass):.0f} % (its area {100 * np.mean(area):.0f} %)"
    )
    print("per-class IoU @0.2:", " ".join(f"{100 * (v or 0):.1f}" for v in at["per_class_iou"]))
    print(
        f"| {args.family} | {args.variant}{' dual' if args.dual_field else ''} "
        f"| {args.seed} | {args.epochs} "
        f"| {' '.join(args.family_set + args.set) or '-'} "
        f"| {last.get('train', float('nan')):.3f} | {last.get('val', float('nan')):.3f} "
        f"| {100 * result['published_miou']:.1f} | {100 * result['best_miou']:.1f} "
        f"({result['best_threshold']}) | {seconds:.0f} |"
    )


if __name__ == "__main__":
    main()
