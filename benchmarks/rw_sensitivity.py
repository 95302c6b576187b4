"""Random-walk sensitivity: mIoU of a finished run's walk over beta, logt and alpha.

Reuses the affinities the `random_walk` rule stored (`rw/<split>/affinity-*.h5`)
and the CAM shards, so no network runs: for every (beta, logt) the walk is
recomputed from the CAMs and scored against the ground truth at every alpha.
Prints a markdown table for benchmarks/RESULTS.md.

    python benchmarks/rw_sensitivity.py --run results --split train \
        --betas 2 4 8 16 --logts 4 6 8 10 --alphas 4 8 16 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from psa_core import io
from psa_core.data import gt_mask_path, read_labels
from psa_core.evaluate import SweepConfusion
from psa_core.random_walk import random_walk, scores_to_mask, walk_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("results"))
    parser.add_argument("--root", type=Path, default=None, help="dataset (default: run/synthetic)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--betas", type=float, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--logts", type=int, nargs="+", default=[4, 6, 8, 10])
    parser.add_argument("--alphas", type=float, nargs="+", default=[4, 8, 16, 32])
    args = parser.parse_args()
    root = args.root or args.run / "synthetic"
    classes, _ = read_labels(args.run / "index" / args.split / "labels.json")
    images = []
    for aff_shard in sorted((args.run / "rw" / args.split).glob("affinity-*.h5")):
        cam_shard = args.run / "cam" / args.split / aff_shard.name.replace("affinity", "shard")
        affs, _ = io.read_score_shard(aff_shard)
        cams, _ = io.read_score_shard(cam_shard)
        for name, (aff, class_ids) in affs.items():
            gt = io.read_mask(gt_mask_path(root, name))
            starts = np.stack([walk_input(cams[name][0], a) for a in args.alphas])
            images.append((torch.from_numpy(aff), starts, class_ids, gt))
    print(f"\n{len(images)} images of split {args.split} ({args.run}); mIoU at alpha:\n")
    print("| beta | logt | " + " | ".join(f"alpha {a:g}" for a in args.alphas) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in args.alphas) + " |")
    for beta in args.betas:
        for logt in args.logts:
            sweep = SweepConfusion(len(classes) + 1, args.alphas)
            for aff, starts, class_ids, gt in images:
                # all alphas in one walk: the class rows are shared, one background row each
                channels = np.concatenate([starts[:, 0], starts[0, 1:]])
                walked = random_walk(aff, torch.from_numpy(channels), beta, logt).numpy()
                num_alphas = len(args.alphas)
                for index in range(num_alphas):
                    stack = np.concatenate([walked[index : index + 1], walked[num_alphas:]])
                    sweep.add(index, scores_to_mask(stack, gt.shape, class_ids), gt)
            result = sweep.result("alpha", args.alphas, published=args.alphas[0])
            cells = " | ".join(f"{row['miou']:.3f}" for row in result["sweep"])
            print(f"| {beta:g} | {logt} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
