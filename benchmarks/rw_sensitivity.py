"""Random-walk sensitivity: mIoU of a finished run's walk over beta, logt and alpha.

Reuses the affinities the `random_walk` rule stored (`rw/<split>/affinity-*.h5`)
and the CAM shards, so no network runs: for every (beta, logt) the walk is
recomputed from the CAMs and scored against the ground truth at every alpha
(`psa_core.random_walk.alpha_sweep_masks`, as the walk's evaluation). With
`--crf` every mask is refined by the dense CRF as `random_walk.crf` does, and
`--crf both` prints the plain and the refined tables side by side. Prints a
markdown table for benchmarks/RESULTS.md.

    python benchmarks/rw_sensitivity.py --run results --split train \
        --betas 2 4 8 16 --logts 4 6 8 10 --alphas 4 8 16 32 --crf both
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from psa_core import io
from psa_core.data import gt_mask_path, image_paths, read_labels
from psa_core.evaluate import SweepConfusion
from psa_core.random_walk import alpha_sweep_masks, random_walk, walk_input

CRF_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("results"))
    parser.add_argument("--root", type=Path, default=None, help="dataset (default: run/synthetic)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--betas", type=float, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--logts", type=int, nargs="+", default=[4, 6, 8, 10])
    parser.add_argument("--alphas", type=float, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--crf", choices=CRF_CHOICES, default="off", help="refine the masks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    refine = CRF_CHOICES[args.crf]
    root = args.root or args.run / "synthetic"
    classes, _ = read_labels(args.run / "index" / args.split / "labels.json")
    images = []
    for aff_shard in sorted((args.run / "rw" / args.split).glob("affinity-*.h5")):
        cam_shard = args.run / "cam" / args.split / aff_shard.name.replace("affinity", "shard")
        affs, _ = io.read_score_shard(aff_shard)
        cams, _ = io.read_score_shard(cam_shard)
        for name, (aff, class_ids) in affs.items():
            gt = io.read_mask(gt_mask_path(root, name))
            image = io.read_image(image_paths(root, [name])[0]) if True in refine else None
            images.append((torch.from_numpy(aff), cams[name][0], class_ids, gt, image))
    print(f"\n{len(images)} images of split {args.split} ({args.run}); mIoU at alpha:\n")
    print("| beta | logt | CRF | " + " | ".join(f"alpha {a:g}" for a in args.alphas) + " |")
    print("| ---: | ---: | --- | " + " | ".join("---:" for _ in args.alphas) + " |")
    for beta in args.betas:
        for logt in args.logts:
            sweeps = {crf: SweepConfusion(len(classes) + 1, args.alphas) for crf in refine}
            for aff, maps, class_ids, gt, image in images:
                walked = random_walk(aff, torch.from_numpy(walk_input(maps, args.alphas[0])),
                                     beta, logt)  # fmt: skip
                for crf, sweep in sweeps.items():
                    masks = alpha_sweep_masks(
                        aff, maps, walked, class_ids, args.alphas, walked_alpha=args.alphas[0],
                        beta=beta, logt=logt, image=image if crf else None,
                    )  # fmt: skip
                    for index, mask in enumerate(masks):
                        sweep.add(index, mask, gt)
            for crf, sweep in sweeps.items():
                result = sweep.result("alpha", args.alphas, published=args.alphas[0])
                cells = " | ".join(f"{100 * row['miou']:.1f}" for row in result["sweep"])
                print(f"| {beta:g} | {logt} | {'on' if crf else 'off'} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
