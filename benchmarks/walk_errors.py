"""Where a finished run's random walk goes wrong (issue 17): affinities by pair type, and
the walk's mask errors by kind. No network runs.

1. AffinityNet's stored affinities (`rw/<split>/affinity-*.h5`) of pairs of stride-8
   cells that are each at least 95 % one ground-truth class, grouped by what the two
   cells hold: background–background, object–object of the same class,
   object–background, object–object of different classes.
2. The walk's masks (`rw/<split>/masks`) against the ground truth: foreground precision
   and recall; the share of true foreground pixels given the wrong class; false-positive
   pixels within one cell (8 px, chessboard distance) of an object and farther; and the
   same class confusion for the CAMs at the configured threshold.

    python benchmarks/walk_errors.py --run results --root results/synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from psa_core import io
from psa_core.affinity import pair_indices
from psa_core.constants import FEATURE_STRIDE, IGNORE_INDEX
from psa_core.data import gt_mask_path, read_labels
from psa_core.metrics import confusion_matrix
from psa_core.random_walk import _padded_pooled, _segmentation_lut

PURE = 0.95
"""A cell counts as one class when at least this share of its pixels are that class."""
GROUPS = ("background-background", "object-same class", "object-background", "object-other class")


def pair_groups(gt: np.ndarray, num_classes: int, radius: int) -> dict[str, np.ndarray]:
    """Boolean (n_offsets, n_from) selections of the pair layout, one per group of GROUPS."""
    onehot = np.stack([(gt == c).astype(np.float32) for c in range(num_classes)])
    pooled = _padded_pooled(onehot)
    height, width = pooled.shape[1:]
    flat = pooled.reshape(num_classes, -1)
    total = flat.sum(0)
    label = flat.argmax(0)
    pure = (flat.max(0) >= PURE * np.maximum(total, 1e-6)) & (total > 0.5)
    frm, to = pair_indices(height, width, radius)
    both = pure[frm][None, :] & pure[to]
    lf, lt = np.broadcast_to(label[frm][None, :], to.shape), label[to]
    same, fg_f, fg_t = lf == lt, lf > 0, lt > 0
    return {
        GROUPS[0]: both & same & ~fg_f,
        GROUPS[1]: both & same & fg_f,
        GROUPS[2]: both & ~same & (~fg_f | ~fg_t),
        GROUPS[3]: both & ~same & fg_f & fg_t,
    }


def near_objects(gt: np.ndarray) -> np.ndarray:
    """Pixels within FEATURE_STRIDE (chessboard distance) of a ground-truth object."""
    objects = torch.from_numpy(((gt > 0) & (gt != IGNORE_INDEX)).astype(np.float32))
    grown = F.max_pool2d(objects[None, None], 2 * FEATURE_STRIDE + 1, 1, FEATURE_STRIDE)
    return grown[0, 0].numpy() > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("results"))
    parser.add_argument("--root", type=Path, default=None, help="dataset (default: run/synthetic)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--cam-threshold", type=float, default=0.2)
    args = parser.parse_args()
    root = args.root or args.run / "synthetic"
    classes, _ = read_labels(args.run / "index" / args.split / "labels.json")
    num_classes = len(classes) + 1
    values: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    confusion = {k: np.zeros((num_classes, num_classes), np.int64) for k in ("cam", "walk")}
    counts = dict.fromkeys(("tp", "fp", "fn", "fp_near", "fp_far"), 0)
    masks = {p.stem: p for p in (args.run / "rw" / args.split / "masks").rglob("*.png")}
    for aff_shard in sorted((args.run / "rw" / args.split).glob("affinity-*.h5")):
        affs, _ = io.read_score_shard(aff_shard)
        cams, _ = io.read_score_shard(
            args.run / "cam" / args.split / aff_shard.name.replace("affinity", "shard")
        )
        for name, (aff, class_ids) in affs.items():
            gt = io.read_mask(gt_mask_path(root, name))
            aff = np.asarray(aff, np.float32)
            if aff.size:
                for group, where in pair_groups(gt, num_classes, args.radius).items():
                    values[group].append(aff[where])
            walk = io.read_mask(masks[name])
            maps = np.asarray(cams[name][0], np.float32)
            floor = np.full((1, *maps.shape[1:]), args.cam_threshold, np.float32)
            cam = _segmentation_lut(class_ids)[np.concatenate([floor, maps]).argmax(0)]
            for kind, pred in (("cam", cam), ("walk", walk)):
                confusion[kind] += confusion_matrix(pred, gt, num_classes)
            keep = gt != IGNORE_INDEX
            fg_pred, fg_true = (walk > 0) & keep, (gt > 0) & keep
            false_pos = fg_pred & ~fg_true
            near = near_objects(gt)
            counts["tp"] += int((fg_pred & fg_true).sum())
            counts["fp"] += int(false_pos.sum())
            counts["fn"] += int((~fg_pred & fg_true).sum())
            counts["fp_near"] += int((false_pos & near).sum())
            counts["fp_far"] += int((false_pos & ~near).sum())
    print(f"{args.run}, split {args.split}: affinities of pairs of {PURE:.0%}-pure cells\n")
    print("| pairs | n | mean | median | p10 | p90 | mean of a^8 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for group, parts in values.items():
        v = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if not v.size:
            print(f"| {group} | 0 | | | | | |")
            continue
        q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9])
        print(
            f"| {group} | {v.size:,} | {v.mean():.3f} | {q50:.3f} | {q10:.3f} | {q90:.3f} | "
            f"{np.mean(v.astype(np.float64) ** 8):.4f} |"
        )
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    print(
        f"\nwalk masks: foreground precision {tp / max(tp + fp, 1):.3f}, recall "
        f"{tp / max(tp + fn, 1):.3f}, predicted / true foreground {(tp + fp) / max(tp + fn, 1):.2f}"
    )
    print(
        f"false-positive pixels within {FEATURE_STRIDE} px of an object: {counts['fp_near']:,}; "
        f"farther: {counts['fp_far']:,}"
    )
    print("\nclass confusion among true object pixels (share of each class's pixels):\n")
    names = ["background", *classes]
    print("| class | CAM: background | CAM: other class | walk: background | walk: other class |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for c in range(1, num_classes):
        row = {k: m[c] / max(m[c].sum(), 1) for k, m in confusion.items()}
        other = {k: 1 - r[0] - r[c] for k, r in row.items()}
        print(
            f"| {names[c]} | {row['cam'][0]:.3f} | {other['cam']:.3f} | "
            f"{row['walk'][0]:.3f} | {other['walk']:.3f} |"
        )
    wrong = {
        k: (m[1:, 1:].sum() - np.trace(m[1:, 1:])) / max(m[1:, 1:].sum(), 1)
        for k, m in confusion.items()
    }
    print(
        f"\nwrong class among object pixels called an object: CAM {wrong['cam']:.3f}, "
        f"walk {wrong['walk']:.3f}"
    )


if __name__ == "__main__":
    main()
