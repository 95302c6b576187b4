"""Probe: is a family out of the from-scratch `tiny` network's reach, or only out of
reach of image-level labels? (issue 17, item 2.)

Trains the `tiny` backbone on a family's train split in process, in a small loop of its
own (images held in memory, one thread: about 3 minutes for 80 epochs of 240 images of
128 px), with one of two kinds of supervision:

    labels   the CAM classifier (`tiny` + the CAM head, multi-label soft margin on the
             pooled class scores), as the pipeline trains it; prints the val loss every
             10 epochs and its share of a constant guess of the class frequencies
             (above 0.9: at chance, as `cam.retry_above` reads it)
    masks    the same backbone with a 1x1 classifier of background + K classes on
             conv6, cross-entropy against the ground-truth masks (full supervision);
             prints the val mIoU every 10 epochs: what the network can learn of the
             family from these images when it is told where the objects are

The loop is not the pipeline's: SGD (momentum 0.9) with the poly schedule and the
`cam` section's lr, batch 8 and crop 128 (zero padding), random scale (`--scale`, of
the image's own size), horizontal flip and a brightness / contrast jitter, validation
on whole val images at the mean training scale. Options change one thing each:
`--pool topk:F` (the mean of the top F of the class scores' cells instead of all of
them), `--weight-decay`, `--norm gn` (group norm for batch norm), `--mixup A` (mixup
of image pairs and their labels, Beta(A, A)), `--mosaic` (each crop side by side with a
crop of another image, labels united), `--balanced` (masks: class weights 1/sqrt(share)
per batch).

    python benchmarks/supervision_probe.py --family texture --supervision masks
    python benchmarks/supervision_probe.py --family texture --pool topk:0.1 --weight-decay 0.005
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cam_probe import pooled_scores  # noqa: E402
from benchmarks.families import FAMILIES  # noqa: E402
from psa_core import io  # noqa: E402
from psa_core.constants import IGNORE_INDEX  # noqa: E402
from psa_core.data import index_split, read_classes  # noqa: E402
from psa_core.metrics import confusion_matrix, constant_guess_loss, iou  # noqa: E402
from psa_core.models import create_model  # noqa: E402
from psa_core.transforms import IMAGENET_NORMALIZATION  # noqa: E402

MASK_OFFSET = 1000.0
"""Masks ride along the image as a fourth channel, offset so that padding is 'ignore'."""


def _load(root: Path, split: str, classes: list[str]):
    entries = index_split(root, split, classes)
    images = [io.read_image(files.image) for _, files in entries.values()]
    masks = [io.read_mask(files.mask) for _, files in entries.values()]
    labels = np.stack([label for label, _ in entries.values()]).astype(np.float32)
    return images, masks, labels


def _group_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            groups = min(8, child.num_features // 4)
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            _group_norms(child)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="texture")
    parser.add_argument("--supervision", choices=("labels", "masks"), default="labels")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and training")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--scale", type=float, nargs=2, default=[0.75, 1.25])
    parser.add_argument("--pool", default="mean", help="mean | max | lse:R | topk:FRACTION")
    parser.add_argument("--weight-decay", type=float, default=None, help="default: cam's")
    parser.add_argument("--norm", choices=("bn", "gn"), default="bn")
    parser.add_argument("--mixup", type=float, default=0.0)
    parser.add_argument("--mosaic", action="store_true")
    parser.add_argument("--balanced", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cam = yaml.safe_load((REPO / "config.yaml").read_text())["cam"]
    lr, batch, crop = cam["lr"], 8, 128
    decay = cam["weight_decay"] if args.weight_decay is None else args.weight_decay
    with tempfile.TemporaryDirectory(prefix="supervision_probe_") as tmp:
        root = FAMILIES[args.family](Path(tmp) / "data", args.data_seed)
        classes = read_classes(root)
        train_images, train_masks, train_labels = _load(root, "train", classes)
        val_images, val_masks, val_labels = _load(root, "val", classes)
    k = len(classes)

    def tensor(image: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))
        return IMAGENET_NORMALIZATION(rgb[None])[0]

    def sample(i: int) -> torch.Tensor:
        """A training crop: 3 image channels (+ the offset mask for `masks`)."""
        t = F.interpolate(
            tensor(train_images[i])[None], scale_factor=rng.uniform(*args.scale),
            mode="bilinear", align_corners=False,
        )[0]  # fmt: skip
        if args.supervision == "masks":
            mask = torch.from_numpy(train_masks[i].astype(np.float32))[None, None]
            t = torch.cat(
                [t, F.interpolate(mask, size=t.shape[1:], mode="nearest")[0] + MASK_OFFSET]
            )
        if rng.random() < 0.5:
            t = t.flip(2)
        t[:3] = t[:3] * rng.uniform(0.7, 1.3) + rng.uniform(-0.3, 0.3)
        out = torch.zeros(t.shape[0], crop, crop)
        if args.supervision == "masks":
            out[3] = IGNORE_INDEX + MASK_OFFSET
        height, width = t.shape[1:]
        y0, x0 = (
            rng.integers(0, max(height - crop, 0) + 1),
            rng.integers(0, max(width - crop, 0) + 1),
        )
        piece = t[:, y0 : y0 + crop, x0 : x0 + crop]
        oy = rng.integers(0, crop - piece.shape[1] + 1)
        ox = rng.integers(0, crop - piece.shape[2] + 1)
        out[:, oy : oy + piece.shape[1], ox : ox + piece.shape[2]] = piece
        return out

    net = create_model("tiny", "cam", k, seed=args.seed)
    if args.norm == "gn":
        _group_norms(net)
    backbone, fc8 = net.backbone, net.head.fc8
    segment = nn.Conv2d(backbone.out_channels["conv6"], k + 1, 1)
    params = [*net.parameters(), *segment.parameters()]

    def class_scores(x: torch.Tensor) -> torch.Tensor:
        return pooled_scores(F.conv2d(backbone(x)["conv6"], fc8.weight).flatten(2), args.pool)

    def segment_logits(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = segment(backbone(x)["conv6"])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)
    n = len(train_images)
    steps, step = args.epochs * (n // batch), 0
    guess = constant_guess_loss(train_labels, val_labels)

    def validate() -> str:
        net.eval()
        segment.eval()
        with torch.no_grad():
            if args.supervision == "labels":
                losses = [
                    float(
                        F.multilabel_soft_margin_loss(
                            class_scores(tensor(image)[None]), torch.from_numpy(label)[None]
                        )
                    )
                    for image, label in zip(val_images, val_labels, strict=True)
                ]
                loss = float(np.mean(losses))
                text = f"val loss {loss:.3f}, share of the constant guess {loss / guess:.2f}"
            else:
                confusion = np.zeros((k + 1, k + 1), dtype=np.int64)
                for image, mask in zip(val_images, val_masks, strict=True):
                    x = F.interpolate(
                        tensor(image)[None], scale_factor=float(np.mean(args.scale)),
                        mode="bilinear", align_corners=False,
                    )  # fmt: skip
                    pred = segment_logits(x, mask.shape)[0].argmax(0).numpy()
                    confusion += confusion_matrix(pred, mask, k + 1)
                miou, per_class = iou(confusion)
                text = (
                    f"val mIoU {100 * miou:.1f} ("
                    + " ".join(f"{100 * v:.1f}" for v in per_class)
                    + ")"
                )
        net.train()
        segment.train()
        return text

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        losses = []
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            index = order[i : i + batch]
            x = torch.stack([sample(j) for j in index])
            y = torch.from_numpy(train_labels[index])
            if args.mosaic:
                other = rng.integers(0, n, len(index))
                x = torch.cat([x, torch.stack([sample(j) for j in other])], 3)
                y = torch.maximum(y, torch.from_numpy(train_labels[other]))
            if args.mixup:
                lam = float(rng.beta(args.mixup, args.mixup))
                perm = torch.randperm(len(index))
                x, y = lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 - step / steps) ** 0.9
            if args.supervision == "labels":
                loss = F.multilabel_soft_margin_loss(class_scores(x[:, :3]), y)
            else:
                target = (x[:, 3] - MASK_OFFSET).long()
                weight = None
                if args.balanced:
                    known = target[target != IGNORE_INDEX]
                    count = torch.bincount(known, minlength=k + 1).float() + 1
                    weight = (count.sum() / count) ** 0.5
                    weight = weight / weight.mean()
                logits = segment_logits(x[:, :3], target.shape[1:])
                loss = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
        if epoch % 10 == 0 or epoch == args.epochs:
            seconds = time.perf_counter() - start
            print(
                f"epoch {epoch}: train loss {np.mean(losses):.3f}, {validate()} ({seconds:.0f} s)"
            )


if __name__ == "__main__":
    main()
