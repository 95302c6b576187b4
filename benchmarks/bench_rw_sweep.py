"""Benchmark: the random walk's alpha sweep (issue 18, item 4), brute force against
`psa_core.random_walk.alpha_sweep_masks`, side by side on the same generated images.

- brute force: per alpha the whole stack walks again, `scores_to_mask(random_walk(aff,
  walk_input(cams, alpha)))`: alphas × (K + 1) channel walks an image;
- sweep: what `psa evaluate-random-walk` does, `alpha_sweep_masks` from the walk the
  random-walk stage stored (K + 1 channels, walked once, outside the timing): one walk
  of the other alphas' background rows together, the class rows upsampled once.

The inputs are generated: images of 1-3 of K = 4 classes (boxes and ellipses), CAMs
that cover each present class with a soft edge and smooth noise, affinities from
features that change across the classes' boundaries, both rounded to float16 as
stored. The script checks that the two give the same masks and the same per-alpha
mIoU, and prints a markdown table for benchmarks/RESULTS.md.

    python benchmarks/bench_rw_sweep.py --images 32 --threads 1 --device cpu
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from psa_core.affinity import pair_affinities, pool_scores
from psa_core.constants import FEATURE_STRIDE
from psa_core.device import resolve_device
from psa_core.metrics import confusion_matrix, iou
from psa_core.random_walk import (
    alpha_sweep_masks,
    padded_size,
    random_walk,
    scores_to_mask,
    walk_input,
)
from psa_core.settings import RandomWalkEvaluateSettings, RandomWalkSettings

NUM_CLASSES = 4
"""K: classes of the generated dataset; each image has 1-3 of them."""

GRID = (48, 64)
"""About the stride-8 grid of the generated images (rows, columns); sizes vary by a few cells."""

VOC_SIZE = (375, 500)
"""A VOC image (H, W): a 47x63 grid."""


# -- inputs -------------------------------------------------------------------------


def smooth(rng: np.random.Generator, channels: int, size: tuple[int, int]) -> np.ndarray:
    """(channels, H, W) float32 noise in about [-1, 1], smooth over ~32 px."""
    coarse = rng.uniform(-1, 1, (1, channels, size[0] // 32 + 2, size[1] // 32 + 2))
    return F.interpolate(torch.from_numpy(coarse).float(), size=size, mode="bilinear")[0].numpy()


def make_gt(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8: 1-3 classes of NUM_CLASSES, one to two boxes or ellipses each."""
    height, width = size
    gt = np.zeros(size, np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    present = rng.choice(NUM_CLASSES, size=rng.integers(1, 4), replace=False)
    for c in present:
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
            ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
            if rng.random() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            else:
                inside = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
            gt[inside] = c + 1
    return gt


def make_cams(rng: np.random.Generator, gt: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """(K, H, W) CAMs in [0, 1], float16-exact: each class's region, blurred, with noise."""
    maps = []
    for c, noise in zip(class_ids, smooth(rng, len(class_ids), gt.shape), strict=True):
        x = torch.from_numpy((gt == c + 1).astype(np.float32))[None, None]
        soft = F.interpolate(F.avg_pool2d(x, 16, ceil_mode=True), size=gt.shape, mode="bilinear")
        cam = np.clip(0.8 * soft[0, 0].numpy() + 0.25 * noise + 0.1, 0, None)
        maps.append(cam / cam.max())
    return np.stack(maps).astype(np.float16).astype(np.float32)


def make_affinities(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """(34, n_from) float16-exact affinities on the padded stride-8 grid of `gt`."""
    onehot = (gt[..., None] == np.arange(NUM_CLASSES + 1)).astype(np.float32)
    pooled = np.moveaxis(pool_scores(onehot), -1, 0)  # (K + 1, h, w)
    prototypes = rng.standard_normal((16, NUM_CLASSES + 1)).astype(np.float32)
    features = np.einsum("fc,chw->fhw", prototypes, pooled)
    features += 0.3 * smooth(rng, 16, pooled.shape[1:])
    aff = pair_affinities(torch.from_numpy(features)[None])[0].numpy()
    return aff.astype(np.float16).astype(np.float32)


def make_images(count: int, seed: int) -> list[dict]:
    """`count` images near GRID (either orientation) and one of VOC_SIZE, last."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        rows = GRID[0] * FEATURE_STRIDE - int(rng.integers(0, 24))
        cols = GRID[1] * FEATURE_STRIDE - int(rng.integers(0, 24))
        sizes.append((rows, cols) if rng.random() < 0.5 else (cols, rows))
    images = []
    for size in [*sizes, VOC_SIZE]:
        gt = make_gt(rng, size)
        class_ids = np.array([v - 1 for v in np.unique(gt) if v > 0], dtype=np.int64)
        images.append(
            {
                "gt": gt,
                "class_ids": class_ids,
                "cams": make_cams(rng, gt, class_ids),
                "aff": make_affinities(rng, gt),
            }  # fmt: skip
        )
    return images


# -- the two sweeps -------------------------------------------------------------------


def brute_force(
    image: dict, alphas: Sequence[float], walk: RandomWalkSettings, device
) -> np.ndarray:
    """(A, H, W) masks, the whole stack walked once per alpha."""
    aff = torch.from_numpy(image["aff"]).to(device)
    size = image["cams"].shape[1:]
    masks = []
    for a in alphas:
        start = torch.from_numpy(walk_input(image["cams"], a)).to(device)
        walked = random_walk(aff, start, walk.beta, walk.logt)
        masks.append(scores_to_mask(walked, size, image["class_ids"]))
    return np.stack(masks)


def sweep(image: dict, alphas: Sequence[float], walk: RandomWalkSettings, device) -> np.ndarray:
    """(A, H, W) masks from the stored walk, as `psa evaluate-random-walk` makes them."""
    return alpha_sweep_masks(
        image["aff"], image["cams"], image["walked"], image["class_ids"], alphas,
        walked_alpha=walk.alpha, beta=walk.beta, logt=walk.logt, device=device,
    )  # fmt: skip


def timed(
    method: Callable[..., np.ndarray], images: list[dict], *args
) -> tuple[list[float], list[np.ndarray]]:
    """Each image's wall time (s) and masks."""
    seconds, masks = [], []
    for image in images:
        start = time.perf_counter()
        masks.append(method(image, *args))
        seconds.append(time.perf_counter() - start)
    return seconds, masks


def mious(masks: list[np.ndarray], images: list[dict], num_alphas: int) -> list[float]:
    """The per-alpha mIoU over `images`."""
    confs = np.zeros((num_alphas, NUM_CLASSES + 1, NUM_CLASSES + 1), np.int64)
    for stack, image in zip(masks, images, strict=True):
        for index, mask in enumerate(stack):
            confs[index] += confusion_matrix(mask, image["gt"], NUM_CLASSES + 1)
    return [iou(conf)[0] for conf in confs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images near the 64x48 grid")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    walk = RandomWalkSettings()  # the published beta 8, logt 8, alpha 16
    alphas = sorted({*map(float, RandomWalkEvaluateSettings().alphas), walk.alpha})

    images = make_images(args.images, args.seed)
    for image in images:  # what the random-walk stage stores, outside the timing
        image["walked"] = random_walk(image["aff"], walk_input(image["cams"], walk.alpha),
                                      walk.beta, walk.logt)  # fmt: skip
    # one warm-up image each: imports, CUDA context, the grid's cached layout
    timed(brute_force, images[:1], alphas, walk, device)
    timed(sweep, images[:1], alphas, walk, device)
    groups = {"generated": images[:-1], "VOC-sized": images[-1:]}
    rows, agree, per_alpha = [], True, {}
    for group, members in groups.items():
        slow_s, slow_masks = timed(brute_force, members, alphas, walk, device)
        fast_s, fast_masks = timed(sweep, members, alphas, walk, device)
        differing = sum(int((a != b).sum()) for a, b in zip(slow_masks, fast_masks, strict=True))
        delta = np.abs(
            np.subtract(
                mious(slow_masks, members, len(alphas)), mious(fast_masks, members, len(alphas))
            )
        ).max()
        agree &= differing == 0 and delta <= 1e-6
        grids = np.array([padded_size(*m["cams"].shape[1:]) for m in members]) // FEATURE_STRIDE
        low, high = grids.min(axis=0), grids.max(axis=0)
        grid_text = "x".join(
            f"{a}" if a == b else f"{a}-{b}" for a, b in zip(low[::-1], high[::-1], strict=True)
        )
        channels = np.mean([len(m["class_ids"]) for m in members])
        per_alpha[group] = mious(fast_masks, members, len(alphas))
        rows.append(
            f"| {group} ({len(members)}, grids {grid_text}, "
            f"K+1 = {channels + 1:.1f}) | {sum(slow_s):.2f} s | {sum(fast_s):.2f} s | "
            f"{sum(slow_s) / sum(fast_s):.1f}x | {differing} | {delta:.1e} |"
        )
    print(f"\n{datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s); "
          f"{len(alphas)} alphas {alphas}, beta {walk.beta:g}, logt {walk.logt}\n")  # fmt: skip
    print("| images | brute force (alphas x (K+1) walks) | sweep (stored walk + one walk) "
          "| speed-up | differing mask pixels | max per-alpha mIoU difference |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    for group, values in per_alpha.items():
        print(
            f"\nmIoU per alpha, {group}: "
            + ", ".join(f"{a:g}: {v:.4f}" for a, v in zip(alphas, values, strict=True))
        )
    print("\nthe two agree" if agree else "\nTHEY DISAGREE")
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
