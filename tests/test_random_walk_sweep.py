"""The alpha sweep of the random walk's evaluation (issue 18: "sweeps at the cost of the
walk"): `psa_core.random_walk.alpha_sweep_masks` and `psa evaluate-random-walk` against a
brute force that walks the whole stack, K + 1 channels, once per alpha.

The inputs are realistic: CAMs that cover each present class's ground truth with a soft
edge and smooth noise, affinities from features that change across object boundaries
(`pair_affinities`), both rounded to float16 as the stages store them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psa_core import io
from psa_core.affinity import (
    DEFAULT_RADIUS,
    check_grid_size,
    pair_affinities,
    pair_offsets,
    pool_scores,
)
from psa_core.constants import FEATURE_STRIDE, IGNORE_INDEX
from psa_core.data import gt_mask_path, listed_names, read_labels
from psa_core.data.synthetic import generate
from psa_core.errors import PsaError
from psa_core.random_walk import alpha_sweep_masks, random_walk, scores_to_mask, walk_input
from psa_core.settings import RandomWalkEvaluateSettings, RandomWalkSettings, RunSettings
from psa_core.stages.common import LabelledImages, Reports
from psa_core.stages.random_walk import evaluate_random_walk
from tests.cli_helpers import psa_in_process as psa
from tests.train_helpers import one_torch_thread

ALPHAS = (2.0, 4.0, 8.0, 24.0, 32.0)
CONFIGURED = RandomWalkSettings().alpha  # 16: the walk the stage stored
BETA, LOGT = RandomWalkSettings().beta, RandomWalkSettings().logt  # published: 8, 8
SHORT_LOGT = 5
"""The single-image cases walk 32 steps: what they check holds for any length."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: a walk's 256 small sparse products run no faster on two, and on a
    busy 2-core machine each product then waits for a descheduled thread (about 50x slower)."""
    with one_torch_thread():
        yield


# -- inputs -------------------------------------------------------------------------


def smooth(rng: np.random.Generator, channels: int, size: tuple[int, int]) -> np.ndarray:
    """(channels, H, W) float32 noise in about [-1, 1], smooth over ~16 px."""
    coarse = torch.from_numpy(
        rng.uniform(-1, 1, (1, channels, size[0] // 16 + 2, size[1] // 16 + 2))
    )
    return F.interpolate(coarse.float(), size=size, mode="bilinear")[0].numpy()


def blurred(mask: np.ndarray) -> np.ndarray:
    """A soft (H, W) float32 version of a 0/1 mask: an 8-pixel edge."""
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    low = F.avg_pool2d(x, 8, ceil_mode=True)
    return F.interpolate(low, size=mask.shape, mode="bilinear")[0, 0].numpy()


def make_cams(rng: np.random.Generator, gt: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """(K, H, W) CAMs in [0, 1], float16-exact: each class's region with noise, max 1."""
    if not len(class_ids):
        return np.zeros((0, *gt.shape), np.float32)
    maps = []
    for c, noise in zip(class_ids, smooth(rng, len(class_ids), gt.shape), strict=True):
        cam = np.clip(0.8 * blurred(gt == c + 1) + 0.25 * noise + 0.1, 0, None)
        maps.append(cam / cam.max())
    return np.stack(maps).astype(np.float16).astype(np.float32)


def make_affinities(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """(34, n_from) float16-exact affinities on the padded stride-8 grid of `gt`: features
    that differ between the ground truth's classes, plus smooth noise."""
    grid = (-(-gt.shape[0] // FEATURE_STRIDE), -(-gt.shape[1] // FEATURE_STRIDE))
    try:
        check_grid_size(*grid, DEFAULT_RADIUS)
    except PsaError:  # no pair: what the random-walk stage stores then
        return np.zeros((len(pair_offsets(DEFAULT_RADIUS)), 0), np.float32)
    labels = np.where(gt == IGNORE_INDEX, 0, gt)
    onehot = (labels[..., None] == np.arange(labels.max() + 1)).astype(np.float32)
    pooled = np.moveaxis(pool_scores(onehot), -1, 0)  # (K + 1, h, w)
    prototypes = rng.standard_normal((16, pooled.shape[0])).astype(np.float32)
    features = np.einsum("fc,chw->fhw", prototypes, pooled)
    features += 0.3 * smooth(rng, 16, pooled.shape[1:])
    aff = pair_affinities(torch.from_numpy(features)[None])[0].numpy()
    return aff.astype(np.float16).astype(np.float32)


def present_classes(gt: np.ndarray) -> np.ndarray:
    return np.array([v - 1 for v in np.unique(gt) if 0 < v < IGNORE_INDEX], dtype=np.int64)


# -- the brute force ----------------------------------------------------------------


def brute_force_masks(aff, cams, class_ids, alphas, logt=LOGT) -> np.ndarray:
    """Per alpha the whole stack walks again: alphas × (K + 1) channel walks."""
    return np.stack(
        [
            scores_to_mask(
                random_walk(aff, walk_input(cams, a), BETA, logt), cams.shape[1:], class_ids
            )
            for a in alphas
        ]
    )


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes in the ground truth or the prediction (design §1.5)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


# -- 1. the masks of one image ----------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "num_classes", "walked_alpha"),
    [
        ((100, 136), 1, CONFIGURED),
        ((120, 96), 3, CONFIGURED),
        ((88, 120), 2, 5.0),  # the stored walk's alpha is not swept
        ((100, 112), 0, CONFIGURED),  # no present class: all background
        ((32, 64), 2, CONFIGURED),  # a grid too small for a pair: the walk is the identity
    ],
)
def test_sweep_masks_equal_walking_the_whole_stack_per_alpha(size, num_classes, walked_alpha):
    rng = np.random.default_rng([size[0], size[1], num_classes])
    gt = np.zeros(size, np.uint8)
    for c in range(num_classes):  # a box per class, overlapping the previous one
        top, left = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        gt[top : top + size[0] // 2, left : left + size[1] // 2] = c + 1
    class_ids = present_classes(gt)
    cams, aff = make_cams(rng, gt, class_ids), make_affinities(rng, gt)
    walked = random_walk(aff, walk_input(cams, walked_alpha), BETA, SHORT_LOGT)
    alphas = sorted({*ALPHAS, CONFIGURED})

    masks = alpha_sweep_masks(
        aff, cams, walked, class_ids, alphas, walked_alpha=walked_alpha, beta=BETA, logt=SHORT_LOGT
    )

    expected = brute_force_masks(aff, cams, class_ids, alphas, SHORT_LOGT)
    assert masks.dtype == np.uint8 and masks.shape == (len(alphas), *size)
    np.testing.assert_array_equal(masks, expected)
    if num_classes and aff.size:  # the sweep moves the masks: a wrong alpha would show
        assert all((masks[i] != masks[i + 1]).any() for i in range(len(alphas) - 1))


def test_a_walk_of_another_image_is_refused() -> None:
    cams = np.full((2, 80, 96), 0.5, np.float32)
    aff = np.zeros((34, 0), np.float32)
    for walked in (np.zeros((2, 10, 12), np.float32), np.zeros((3, 10, 13), np.float32)):
        with pytest.raises(PsaError, match="same image"):
            alpha_sweep_masks(aff, cams, walked, np.array([0, 2]), ALPHAS, walked_alpha=CONFIGURED)


# -- 2. the evaluation: per-alpha mIoU (the acceptance) ------------------------------


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Eight synthetic images with CAM, affinity and walk shards as the stages write them
    (two shards), and the brute-force per-alpha confusions."""
    folder = tmp_path_factory.mktemp("rw_sweep")
    root = folder / "data"
    generate(root, num_train=8, num_val=0, image_size=(96, 144), num_classes=4, seed=5,
             max_classes_per_image=3)  # fmt: skip
    images, labels = folder / "images.txt", folder / "labels.json"
    proc = psa("index", "--root", str(root), "--split", "train",
               "--out-images", str(images), "--out-labels", str(labels))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    classes, _ = read_labels(labels)
    names = listed_names(images)
    grid = sorted({*ALPHAS, CONFIGURED})
    confs = np.zeros((len(grid), len(classes) + 1, len(classes) + 1), np.int64)
    rng = np.random.default_rng(18)
    shards: dict[str, list[Path]] = {"cam": [], "affinity": [], "walk": []}
    for index, part in enumerate((names[:5], names[5:])):
        stored: dict[str, dict] = {kind: {} for kind in shards}
        for name in part:
            gt = io.read_mask(gt_mask_path(root, name))
            class_ids = present_classes(gt)
            cams, aff = make_cams(rng, gt, class_ids), make_affinities(rng, gt)
            walked = random_walk(aff, walk_input(cams, CONFIGURED), BETA, LOGT)
            stored["cam"][name] = (cams, class_ids)
            stored["affinity"][name] = (aff, class_ids)
            stored["walk"][name] = (walked, class_ids)
            for a, mask in enumerate(brute_force_masks(aff, cams, class_ids, grid)):
                keep = gt != IGNORE_INDEX
                pairs = gt[keep].astype(np.int64) * (len(classes) + 1) + mask[keep]
                confs[a] += np.bincount(pairs, minlength=confs[a].size).reshape(confs[a].shape)
        for kind, scores in stored.items():
            path = folder / f"{kind}-{index}.h5"
            dtype = "float32" if kind == "walk" else "float16"
            io.write_score_shard(path, scores, attrs={"classes": classes}, dtype=dtype)
            shards[kind].append(path)
    return {
        "data": LabelledImages(root=root, images=images, labels=labels),
        "shards": shards,
        "folder": folder,
        "grid": grid,
        "reference": [miou(conf) for conf in confs],
    }


def test_evaluation_gives_the_brute_force_miou_at_every_alpha(split: dict) -> None:
    out = split["folder"]
    evaluate_random_walk(
        data=split["data"],
        walks=split["shards"]["walk"],
        affinities=split["shards"]["affinity"],
        cams=split["shards"]["cam"],
        walk=RandomWalkSettings(),
        evaluate=RandomWalkEvaluateSettings(alphas=ALPHAS),
        run=RunSettings(device="cpu"),
        reports=Reports(out_json=out / "rw.json", out_csv=out / "rw.csv"),
        out_plot=out / "rw.svg",
    )

    result = json.loads((out / "rw.json").read_text())
    reference = split["reference"]
    assert [row["alpha"] for row in result["sweep"]] == split["grid"]
    assert result["num_images"] == 8
    np.testing.assert_allclose(
        [row["miou"] for row in result["sweep"]], reference, rtol=0, atol=1e-6
    )
    assert result["published_miou"] == pytest.approx(
        reference[split["grid"].index(CONFIGURED)], abs=1e-6
    )
    # neighbouring alphas differ by far more than the tolerance, so scoring one alpha's
    # masks under another's name fails the comparison above
    assert np.abs(np.diff(reference)).min() > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sweep_on_the_gpu_matches_the_cpu(split: dict) -> None:
    """cuSPARSE sums in another order than the CPU: a few pixels at near-ties may differ."""
    shards = split["shards"]
    names = listed_names(split["data"].images)
    for name in names:
        where = {kind: next(p for p in paths if name in io.read_score_shard_names(p))
                 for kind, paths in shards.items()}  # fmt: skip
        cams, class_ids = io.read_score(where["cam"], name)
        aff, _ = io.read_score(where["affinity"], name)
        walked, _ = io.read_score(where["walk"], name)
        on = {
            device: alpha_sweep_masks(
                aff, cams, walked, class_ids, split["grid"], walked_alpha=CONFIGURED, device=device
            )  # fmt: skip
            for device in ("cpu", "cuda")
        }
        assert (on["cpu"] != on["cuda"]).mean() < 1e-3
