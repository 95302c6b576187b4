"""Random walk with oracle affinities: is AffinityNet or the walk the limit? (issue 17)

For every train image of a finished run, the walk starts from the stored CAMs as
the `random_walk` rule does. It is run twice, and both walks are scored against
the ground truth at several alphas and walk lengths:

    net      the affinities AffinityNet predicted (`rw/train/affinity-*.h5`)
    oracle   affinities from a label map pooled to the stride-8 grid. The affinity of
             two cells is the chance that a pixel of one and a pixel of the other
             share a class. `--oracle gt` takes the ground-truth masks.
             `--oracle crf` takes the CRF labels AffinityNet trained on; a cell
             mostly uncertain (255) gets affinity 0.5 to every partner.

No network runs. Prints one line per (affinities, logt) with the mIoU at every alpha.

    python benchmarks/rw_oracle.py --run results --root results/synthetic --oracle gt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from psa_core import io
from psa_core.affinity import pair_indices
from psa_core.constants import FEATURE_STRIDE
from psa_core.data import gt_mask_path, read_labels
from psa_core.evaluate import SweepConfusion
from psa_core.random_walk import _padded_pooled, alpha_sweep_masks, random_walk, walk_input

UNKNOWN_AFFINITY = 0.5
"""Affinity of a mostly uncertain cell (CRF labels) to every partner."""


def oracle_affinities(labels: np.ndarray, num_classes: int, radius: int) -> np.ndarray:
    """(n_offsets, n_from) P(same class) of the cell pairs, from an (H, W) label map
    (0..num_classes - 1; any other value, e.g. 255, is unknown)."""
    onehot = np.stack([(labels == c).astype(np.float32) for c in range(num_classes)])
    pooled = _padded_pooled(onehot)  # zero-padded like the image, 8x8 average-pooled
    height, width = pooled.shape[1:]
    flat = pooled.reshape(num_classes, -1)
    known = flat.sum(0) >= 0.5  # at least half the cell's pixels carry a label
    shares = flat / np.maximum(flat.sum(0, keepdims=True), 1e-6)
    frm, to = pair_indices(height, width, radius)
    same = (shares[:, frm][:, None, :] * shares[:, to]).sum(0)
    same = np.where(known[frm][None, :] & known[to], same, UNKNOWN_AFFINITY)
    return np.clip(same, 1e-4, 1.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("results"))
    parser.add_argument("--root", type=Path, default=None, help="dataset (default: run/synthetic)")
    parser.add_argument("--oracle", choices=("gt", "crf"), default="gt")
    parser.add_argument("--beta", type=float, default=8)
    parser.add_argument("--logts", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--alphas", type=float, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--radius", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.root or args.run / "synthetic"
    classes, _ = read_labels(args.run / "index" / "train" / "labels.json")
    num_classes = len(classes) + 1
    sweeps = {
        (kind, logt): SweepConfusion(num_classes, args.alphas)
        for kind in ("net", "oracle")
        for logt in args.logts
    }
    label_maps = args.run / "crf" / "train" / "label_maps"
    for aff_shard in sorted((args.run / "rw" / "train").glob("affinity-*.h5")):
        cam_shard = args.run / "cam" / "train" / aff_shard.name.replace("affinity", "shard")
        affs, _ = io.read_score_shard(aff_shard)
        cams, _ = io.read_score_shard(cam_shard)
        for name, (aff, class_ids) in affs.items():
            gt = io.read_mask(gt_mask_path(root, name))
            if args.oracle == "gt":
                labels = gt
            else:
                (path,) = label_maps.glob(f"*/{name}.png")
                labels = io.read_mask(path)
            oracle = oracle_affinities(labels, num_classes, args.radius)
            start = torch.from_numpy(walk_input(cams[name][0], args.alphas[0]))
            for kind, pairs in (("net", np.asarray(aff)), ("oracle", oracle)):
                for logt in args.logts:
                    walked = random_walk(torch.from_numpy(pairs), start, args.beta, logt)
                    masks = alpha_sweep_masks(
                        pairs, cams[name][0], walked, class_ids, args.alphas,
                        walked_alpha=args.alphas[0], beta=args.beta, logt=logt,
                    )  # fmt: skip
                    for index, mask in enumerate(masks):
                        sweeps[(kind, logt)].add(index, mask, gt)
    print(
        f"{args.run}, train, beta {args.beta:g}, oracle from {args.oracle}, stride {FEATURE_STRIDE}"
    )
    print("| affinities | logt | " + " | ".join(f"alpha {a:g}" for a in args.alphas) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in args.alphas) + " |")
    for (kind, logt), sweep in sweeps.items():
        result = sweep.result("alpha", args.alphas, published=args.alphas[0])
        cells = " | ".join(f"{100 * row['miou']:.1f}" for row in result["sweep"])
        print(f"| {kind} | {logt} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
