"""The dense CRF on the random walk's masks (`random_walk.crf`, issue 17): the walk's
scores live on the stride-8 grid, and the CRF moves the masks' outlines onto the image's
edges, as the paper's synthesized labels (CAM + RW + dCRF).

References: a hand-built image whose edge falls inside a grid cell, where the plain
walk's outline and the image's edge are known to the pixel; `crf_inference` on the
normalised scores written out; the alpha sweep against walking the whole stack per alpha.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from psa_core import io
from psa_core.crf import crf_inference
from psa_core.metrics import confusion_matrix
from psa_core.random_walk import (
    alpha_sweep_masks,
    crf_refined,
    random_walk,
    scores_to_mask,
    walk_input,
)
from psa_core.settings import RandomWalkEvaluateSettings, RandomWalkSettings, RunSettings
from psa_core.stages.common import Reports
from psa_core.stages.random_walk import evaluate_random_walk
from tests.test_random_walk_sweep import (
    ALPHAS,
    BETA,
    CONFIGURED,
    SHORT_LOGT,
    make_affinities,
    make_cams,
    miou,
    present_classes,
    split,  # noqa: F401  (the module fixture of eight synthetic images)
)

EDGE = 37
"""Column of the image's colour edge: inside the grid cell of columns 32-39."""


def two_colour_image(size: tuple[int, int], edge: int) -> np.ndarray:
    """(H, W, 3) uint8: dark green left of column `edge`, light grey from it on."""
    image = np.empty((*size, 3), np.uint8)
    image[:, :edge] = (20, 90, 40)
    image[:, edge:] = (200, 200, 200)
    return image


def test_the_crf_moves_the_outline_from_the_grid_onto_the_image_edge() -> None:
    size = (48, 80)  # a 6 x 10 grid
    grid = np.zeros((2, 6, 10), np.float32)  # background first, then the one class
    grid[1, :, :5] = 0.9  # the walk says: class on cells 0-4 (columns 0-39)
    grid[0, :, 5:] = 0.9
    grid[0, :, :5] = grid[1, :, 5:] = 0.1
    image = two_colour_image(size, EDGE)
    class_ids = np.array([2])

    plain = scores_to_mask(grid, size, class_ids)
    refined = scores_to_mask(grid, size, class_ids, image)

    # bilinear upsampling puts the plain outline half-way between the cell centres (x = 40)
    assert (plain[:, :40] == 3).all() and (plain[:, 40:] == 0).all()
    # the CRF follows the colours: class left of the edge, background from it on
    assert (refined[:, :EDGE] == 3).all() and (refined[:, EDGE:] == 0).all()


def test_crf_refined_is_the_crf_of_the_normalised_scores() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(-0.1, 1.0, (3, 24, 40)).astype(np.float32)
    scores[0] = np.abs(scores[0])  # some negative scores (clipped at 0), none all-zero pixel
    up = torch.from_numpy(scores)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    probs = np.clip(up.numpy(), 0, None)
    probs = probs / probs.sum(axis=0, keepdims=True)

    expected = crf_inference(image, probs).argmax(axis=0)

    np.testing.assert_array_equal(crf_refined(up, image), expected)


@pytest.mark.parametrize(("size", "num_classes"), [((64, 88), 2), ((56, 72), 0)])
def test_sweep_with_crf_equals_walking_and_refining_the_whole_stack_per_alpha(
    size, num_classes
) -> None:
    rng = np.random.default_rng([size[0], num_classes, 17])
    gt = np.zeros(size, np.uint8)
    for c in range(num_classes):
        top, left = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        gt[top : top + size[0] // 2, left : left + size[1] // 2] = c + 1
    class_ids = present_classes(gt)
    cams, aff = make_cams(rng, gt, class_ids), make_affinities(rng, gt)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image[gt > 0] //= 3  # objects darker than the background: edges for the CRF
    alphas = sorted({*ALPHAS, CONFIGURED})
    walked = random_walk(aff, walk_input(cams, CONFIGURED), BETA, SHORT_LOGT)

    masks = alpha_sweep_masks(
        aff, cams, walked, class_ids, alphas,
        walked_alpha=CONFIGURED, beta=BETA, logt=SHORT_LOGT, image=image,
    )  # fmt: skip

    expected = np.stack(
        [
            scores_to_mask(
                random_walk(aff, walk_input(cams, a), BETA, SHORT_LOGT), size, class_ids, image
            )
            for a in alphas
        ]
    )
    np.testing.assert_array_equal(masks, expected)
    plain = alpha_sweep_masks(
        aff, cams, walked, class_ids, alphas,
        walked_alpha=CONFIGURED, beta=BETA, logt=SHORT_LOGT,
    )  # fmt: skip
    if num_classes:  # the CRF changed something: the comparison above is not the plain one
        assert (masks != plain).any()


def test_evaluation_with_crf_scores_the_refined_masks(split: dict) -> None:  # noqa: F811
    """The configured alpha's mIoU is that of the masks `scores_to_mask(..., image)` gives,
    and it differs from the plain walk's."""
    out = split["folder"]
    results = {}
    for crf in (False, True):
        evaluate_random_walk(
            data=split["data"],
            walks=split["shards"]["walk"],
            affinities=split["shards"]["affinity"],
            cams=split["shards"]["cam"],
            walk=RandomWalkSettings(crf=crf),
            evaluate=RandomWalkEvaluateSettings(alphas=(CONFIGURED,)),
            run=RunSettings(device="cpu"),
            reports=Reports(out_json=out / f"rw-{crf}.json", out_csv=out / f"rw-{crf}.csv"),
            out_plot=out / f"rw-{crf}.svg",
        )
        results[crf] = json.loads((out / f"rw-{crf}.json").read_text())["published_miou"]

    data = split["data"]
    num_classes = len(data.classes(*split["shards"]["walk"])) + 1
    conf = np.zeros((num_classes, num_classes), np.int64)
    images = data.image_files()
    for name, gt_path in data.ground_truth().items():
        where = {
            kind: next(p for p in paths if name in io.read_score_shard_names(p))
            for kind, paths in split["shards"].items()
        }
        walked, class_ids = io.read_score(where["walk"], name)
        gt = io.read_mask(gt_path)
        mask = scores_to_mask(walked, gt.shape, class_ids, io.read_image(images[name]))
        conf += confusion_matrix(mask, gt, num_classes)
    expected = miou(conf)

    assert results[True] == pytest.approx(expected, abs=1e-6)
    assert abs(results[True] - results[False]) > 1e-3
