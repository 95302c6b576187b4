"""psa_core.affinity: pair labels, the affinity loss, CRF label maps and score pooling
(docs/design.md §1.2, §1.3), and the affinity stage's training augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psa_core.affinity import (
    affinity_loss,
    affinity_training_labels,
    crf_label_map,
    pair_labels,
    pool_scores,
)
from psa_core.errors import PsaError
from psa_core.transforms import (
    IMAGENET_NORMALIZATION,
    AffinityTrainTransform,
    Normalization,
    color_jitter,
    random_crop,
    random_hflip,
)

U = 255  # uncertain

# -- pair_labels ------------------------------------------------------------------

# Radius 2: offsets (0,1), (1,-1), (1,0), (1,1); from-cells rows [0, 2), cols [1, 4).
HAND_LABEL = np.array(
    [
        [0, 0, 1, U, 1],
        [0, U, 1, 2, 2],
        [U, 0, 0, 1, 2],
    ],
    dtype=np.uint8,
)
# From-cells, row-major: F0=(0,1)=0  F1=(0,2)=1  F2=(0,3)=U  F3=(1,1)=U  F4=(1,2)=1  F5=(1,3)=2
# (0,1):  to (0,2)=1 (0,3)=U (0,4)=1 (1,2)=1 (1,3)=2 (1,4)=2
#         F0 0/1 neg, F1 1/U -, F2 -, F3 -, F4 1/2 neg, F5 2/2 fg
# (1,-1): to (1,0)=0 (1,1)=U (1,2)=1 (2,0)=U (2,1)=0 (2,2)=0
#         F0 0/0 bg, F1 1/U -, F2 -, F3 -, F4 1/0 neg, F5 2/0 neg
# (1,0):  to (1,1)=U (1,2)=1 (1,3)=2 (2,1)=0 (2,2)=0 (2,3)=1
#         F0 0/U -, F1 1/1 fg, F2 -, F3 -, F4 1/0 neg, F5 2/1 neg
# (1,1):  to (1,2)=1 (1,3)=2 (1,4)=2 (2,2)=0 (2,3)=1 (2,4)=2
#         F0 0/1 neg, F1 1/2 neg, F2 -, F3 -, F4 1/1 fg, F5 2/2 fg
HAND_BG = [
    [0, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
]
HAND_FG = [
    [0, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0],
    [0, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, 1],
]
HAND_NEG = [
    [1, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 1, 1],
    [0, 0, 0, 0, 1, 1],
    [1, 1, 0, 0, 0, 0],
]


def test_pair_labels_by_hand_radius_2():
    bg, fg, neg = pair_labels(HAND_LABEL, radius=2)
    for out in (bg, fg, neg):
        assert out.dtype == np.float32 and out.shape == (4, 6)
    np.testing.assert_array_equal(bg, np.array(HAND_BG, dtype=np.float32))
    np.testing.assert_array_equal(fg, np.array(HAND_FG, dtype=np.float32))
    np.testing.assert_array_equal(neg, np.array(HAND_NEG, dtype=np.float32))


def design_offsets_radius_5() -> list[tuple[int, int]]:
    """docs/design.md §1.2, read literally: (0,1)…(0,4), then dy = 1…4 with dx = -4…4,
    keeping 0 < dy² + dx² < 25."""
    offsets = [(0, 1), (0, 2), (0, 3), (0, 4)]
    for dy in (1, 2, 3, 4):
        for dx in (-4, -3, -2, -1, 0, 1, 2, 3, 4):
            if 0 < dy * dy + dx * dx < 25:
                offsets.append((dy, dx))
    return offsets


def brute_force_pair_labels(label: np.ndarray) -> tuple[np.ndarray, ...]:
    h, w = label.shape
    offsets = design_offsets_radius_5()
    from_cells = [(row, col) for row in range(0, h - 4) for col in range(4, w - 4)]
    bg = np.zeros((len(offsets), len(from_cells)), dtype=np.float32)
    fg = np.zeros_like(bg)
    neg = np.zeros_like(bg)
    for k, (dy, dx) in enumerate(offsets):
        for i, (row, col) in enumerate(from_cells):
            a, b = int(label[row, col]), int(label[row + dy, col + dx])
            if a == 0 and b == 0:
                bg[k, i] = 1
            elif a == b and a != 0 and a < 255 and b < 255:
                fg[k, i] = 1
            elif a != b and a < 255 and b < 255:
                neg[k, i] = 1
    return bg, fg, neg


@pytest.mark.parametrize(("h", "w", "seed"), [(5, 9, 0), (5, 9, 1), (8, 13, 2), (11, 10, 3)])
def test_pair_labels_radius_5_brute_force(h, w, seed):
    label = np.random.default_rng(seed).choice([0, 1, 2, 255], size=(h, w)).astype(np.uint8)
    got = pair_labels(label, radius=5)
    want = brute_force_pair_labels(label)
    assert got[0].shape == (34, (h - 4) * (w - 8))
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)
    # bg, fg and neg are disjoint
    assert (got[0] + got[1] + got[2]).max() <= 1


def test_pair_labels_rejects_small_grid_and_wrong_rank():
    with pytest.raises(PsaError, match="too small"):
        pair_labels(np.zeros((4, 9), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        pair_labels(np.zeros((5, 9, 1), dtype=np.uint8))


# -- affinity_loss -----------------------------------------------------------------

EPS = 1e-5


def test_affinity_loss_by_hand():
    aff = torch.tensor([[0.9, 0.5, 0.2], [0.7, 0.1, 1.0]], requires_grad=True)
    bg = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    fg = torch.tensor([[0.0, 1, 0], [0, 0, 1]])
    neg = torch.tensor([[0.0, 0, 1], [1, 1, 0]])
    loss, parts = affinity_loss(aff, bg, fg, neg)

    bg_loss = -math.log(0.9 + EPS) / (1 + EPS)
    fg_loss = (-math.log(0.5 + EPS) - math.log(1.0 + EPS)) / (2 + EPS)
    neg_loss = (-math.log(1 + EPS - 0.2) - math.log(1 + EPS - 0.7) - math.log(1 + EPS - 0.1)) / (
        3 + EPS
    )
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(bg_loss / 4 + fg_loss / 4 + neg_loss / 2, rel=1e-6)
    assert parts["bg_loss"].item() == pytest.approx(bg_loss, rel=1e-6)
    assert parts["fg_loss"].item() == pytest.approx(fg_loss, rel=1e-6)
    assert parts["neg_loss"].item() == pytest.approx(neg_loss, rel=1e-6)
    assert [float(parts[k]) for k in ("bg_count", "fg_count", "neg_count")] == [1.0, 2.0, 3.0]
    assert not any(p.requires_grad for p in parts.values())

    loss.backward()
    # d/da of bg/4 term at 0.9: -1/(4·(0.9+ε)·(1+ε)); a neg pair at 0.2: +1/(2·(0.8+ε)·(3+ε))
    assert aff.grad[0, 0].item() == pytest.approx(-1 / (4 * (0.9 + EPS) * (1 + EPS)), rel=1e-5)
    assert aff.grad[0, 2].item() == pytest.approx(1 / (2 * (0.8 + EPS) * (3 + EPS)), rel=1e-5)


def test_affinity_loss_sums_over_the_batch_not_per_image():
    a = torch.tensor([[[0.9, 0.5]], [[0.3, 0.6]]])  # (B=2, 1 offset, 2 from-cells)
    bg = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])  # 2 + 1 bg pairs
    zero = torch.zeros_like(a)
    loss, parts = affinity_loss(a, bg, zero, zero)
    pooled = -(math.log(0.9 + EPS) + math.log(0.5 + EPS) + math.log(0.6 + EPS)) / (3 + EPS)
    assert parts["bg_loss"].item() == pytest.approx(pooled, rel=1e-6)
    assert float(parts["bg_count"]) == 3.0
    # zero-count parts are exactly 0, and the loss is the bg term alone
    assert parts["fg_loss"].item() == 0.0 and parts["neg_loss"].item() == 0.0
    assert float(parts["fg_count"]) == 0.0 and float(parts["neg_count"]) == 0.0
    assert loss.item() == pytest.approx(pooled / 4, rel=1e-6)


def test_affinity_loss_gradient_only_where_labelled_and_float32_under_autocast():
    aff = torch.full((2, 3, 4), 0.5, dtype=torch.bfloat16, requires_grad=True)
    labels = [torch.zeros(2, 3, 4) for _ in range(3)]
    labels[0][0, 0, 0] = 1
    labels[1][1, 2, 3] = 1
    labels[2][0, 1, 2] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = affinity_loss(aff, *labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert aff.grad is not None
    labelled = (labels[0] + labels[1] + labels[2]) > 0
    assert (aff.grad[labelled] != 0).all()
    assert (aff.grad[~labelled] == 0).all()


def test_affinity_loss_at_affinity_one_is_finite():
    aff = torch.ones(1, 2)
    loss, _ = affinity_loss(
        aff, torch.tensor([[1.0, 0]]), torch.zeros(1, 2), torch.tensor([[0, 1.0]])
    )
    assert torch.isfinite(loss)
    one_minus_a = float(np.float32(1 + EPS) - np.float32(1.0))  # ε after float32 rounding
    expected = -math.log(1 + EPS) / 4 / (1 + EPS) - math.log(one_minus_a) / 2 / (1 + EPS)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_affinity_loss_shape_mismatch():
    with pytest.raises(ValueError, match="must match"):
        affinity_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 2), torch.ones(2, 3))


# -- crf_label_map -----------------------------------------------------------------


def crf_stacks() -> tuple[np.ndarray, np.ndarray]:
    """Two present classes on a 2x3 grid; (bg, class A, class B) per pixel."""
    la = np.zeros((3, 2, 3), dtype=np.float32)
    ha = np.zeros((3, 2, 3), dtype=np.float32)
    # (0,0): la bg, ha bg                   -> 0
    la[:, 0, 0], ha[:, 0, 0] = (0.8, 0.1, 0.1), (0.6, 0.3, 0.1)
    # (0,1): la bg, ha class A              -> 255 (uncertain)
    la[:, 0, 1], ha[:, 0, 1] = (0.7, 0.2, 0.1), (0.2, 0.7, 0.1)
    # (0,2): la class A, ha class A         -> A
    la[:, 0, 2], ha[:, 0, 2] = (0.1, 0.6, 0.3), (0.0, 0.7, 0.3)
    # (1,0): la class B, ha class B         -> B
    la[:, 1, 0], ha[:, 1, 0] = (0.2, 0.3, 0.5), (0.1, 0.3, 0.6)
    # (1,1): la class A, ha bg              -> 0 (ha's background wins)
    la[:, 1, 1], ha[:, 1, 1] = (0.3, 0.5, 0.2), (0.5, 0.4, 0.1)
    # (1,2): all zero (padding)             -> 255
    return la, ha


def test_crf_label_map_stack_positions_and_class_ids():
    la, ha = crf_stacks()
    positions = crf_label_map(la, ha)
    assert positions.dtype == np.uint8 and positions.shape == (2, 3)
    np.testing.assert_array_equal(positions, [[0, U, 1], [2, 0, U]])
    voc = crf_label_map(la, ha, class_ids=np.array([4, 14]))  # bus, person
    np.testing.assert_array_equal(voc, [[0, U, 5], [15, 0, U]])


def test_crf_label_map_tiny_scores_are_outside_the_image():
    la, ha = crf_stacks()
    la[:, 1, 2] = (1e-6, 9e-6, 0.0)
    ha[:, 1, 2] = (9e-6, 1e-6, 0.0)  # ha argmax bg, but no score anywhere
    assert crf_label_map(la, ha)[1, 2] == U
    la[1, 1, 2] = 2e-5  # one score above the threshold: a real (la fg, ha bg) cell
    assert crf_label_map(la, ha)[1, 2] == 0


def test_crf_label_map_rejects_mismatched_input():
    la, ha = crf_stacks()
    with pytest.raises(ValueError, match="stacks"):
        crf_label_map(la, ha[:2])
    with pytest.raises(ValueError, match="class ids"):
        crf_label_map(la, ha, class_ids=[3])
    with pytest.raises(ValueError, match="class ids"):
        crf_label_map(la, ha, class_ids=[3, 254])


# -- pool_scores -------------------------------------------------------------------


def test_pool_scores_zero_padding_by_hand():
    rows = np.arange(10, dtype=np.float32)[:, None].repeat(10, axis=1)
    scores = np.stack([np.ones((10, 10), dtype=np.float32), rows], axis=-1)  # (10, 10, 2)
    pooled = pool_scores(scores, 8)
    assert pooled.shape == (2, 2, 2) and pooled.dtype == np.float32
    # ones: full block 64/64; 8x2 and 2x8 blocks 16/64; 2x2 block 4/64
    np.testing.assert_allclose(pooled[..., 0], [[1.0, 0.25], [0.25, 0.0625]])
    # row index: rows 0..7 → 28 per column, rows 8, 9 → 17 per column
    np.testing.assert_allclose(
        pooled[..., 1], [[28 * 8 / 64, 28 * 2 / 64], [17 * 8 / 64, 17 * 2 / 64]]
    )
    np.testing.assert_allclose(pool_scores(scores[..., 0], 8), pooled[..., 0])  # (H, W) input


def test_pool_scores_matches_torch_avg_pool_on_multiples_of_8():
    scores = np.random.default_rng(0).random((16, 24, 3)).astype(np.float32)
    expected = F.avg_pool2d(torch.from_numpy(scores).permute(2, 0, 1)[None], 8)[0]
    np.testing.assert_allclose(pool_scores(scores), expected.permute(1, 2, 0).numpy(), rtol=1e-6)


# -- affinity_training_labels -----------------------------------------------------


def cell_stacks(cells: np.ndarray, num_fg: int) -> tuple[np.ndarray, np.ndarray]:
    """(la, ha) per-cell stacks (C + 1, h, w) that crf_label_map turns into `cells`
    (stack positions; 255 = uncertain, -1 = no score)."""
    h, w = cells.shape
    la = np.zeros((num_fg + 1, h, w), dtype=np.float32)
    ha = np.zeros_like(la)
    for (row, col), value in np.ndenumerate(cells):
        if value == 0:  # confident background
            la[0, row, col] = ha[0, row, col] = 0.9
            la[1, row, col] = ha[1, row, col] = 0.1
        elif value == U:  # la background, ha foreground
            la[0, row, col], la[1, row, col] = 0.6, 0.4
            ha[0, row, col], ha[1, row, col] = 0.3, 0.7
        elif value > 0:
            la[value, row, col] = ha[value, row, col] = 0.8
            la[0, row, col] = ha[0, row, col] = 0.2
    return la, ha


def test_affinity_training_labels_end_to_end():
    # 3x4 cells of 8x8 pixels, the last column only 6 pixels wide (24x30 image);
    # cell (2, 0) lies in the zero padding.
    cells = np.array([[0, 0, 1, U], [U, 1, 1, 2], [-1, 2, 0, 0]])
    expected = np.where(cells < 0, U, cells).astype(np.uint8)
    la_cells, ha_cells = cell_stacks(cells, num_fg=2)
    up = np.ones((8, 8), dtype=np.float32)
    la = np.stack([np.kron(c, up) for c in la_cells], axis=-1)[:24, :30]
    ha = np.stack([np.kron(c, up) for c in ha_cells], axis=-1)[:24, :30]

    la_pooled = np.moveaxis(pool_scores(la), -1, 0)
    ha_pooled = np.moveaxis(pool_scores(ha), -1, 0)
    np.testing.assert_array_equal(crf_label_map(la_pooled, ha_pooled), expected)

    got = affinity_training_labels(la, ha, radius=2)
    want = pair_labels(expected, radius=2)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)
    # from-cells (0,1) (0,2) (1,1) (1,2) = 0, 1, 1, 1; e.g. offset (0,1): 0/1 neg, 1/U -,
    # 1/1 fg, 1/2 neg; offset (1,-1): 0/U -, 1/1 fg, 1/U(padding) -, 1/2 neg
    bg, fg, neg = got
    np.testing.assert_array_equal(fg[0], [0, 0, 1, 0])
    np.testing.assert_array_equal(neg[0], [1, 0, 0, 1])
    np.testing.assert_array_equal(fg[1], [0, 1, 0, 0])
    np.testing.assert_array_equal(neg[1], [0, 0, 0, 1])
    assert bg.sum() == 0  # the 0-0 pairs (0,0)-(0,1) and (2,2)-(2,3) start at no from-cell


# -- AffinityTrainTransform --------------------------------------------------------

NO_JITTER = (0.0, 0.0, 0.0, 0.0)
IDENTITY = Normalization(mean=(0.0, 0.0, 0.0))


def coordinate_sample(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and scores that both encode (y + 1, x + 1); image channel 2 is 7."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([y + 1, x + 1, np.full_like(y, 7)], axis=-1).astype(np.uint8)
    scores = np.stack([y + 1, x + 1, np.ones_like(y)], axis=-1).astype(np.float32)
    return image, scores


def test_affinity_transform_shapes_and_determinism():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    scores = np.random.default_rng(1).random((40, 50, 6)).astype(np.float32)
    transform = AffinityTrainTransform(IMAGENET_NORMALIZATION, crop_size=32)
    x, s = transform(image, scores, np.random.default_rng(5))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    assert s.shape == (32, 32, 6) and s.dtype == np.float32 and s.flags.c_contiguous
    x2, s2 = transform(image, scores, np.random.default_rng(5))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(s, s2)
    x3, _ = transform(image, scores, np.random.default_rng(6))
    assert not np.array_equal(x, x3)


def test_affinity_transform_follows_reference_order():
    image = np.random.default_rng(0).integers(0, 256, (30, 20, 3)).astype(np.uint8)
    scores = np.random.default_rng(1).random((30, 20, 4)).astype(np.float32)
    transform = AffinityTrainTransform(IMAGENET_NORMALIZATION, crop_size=24)
    for seed in range(6):
        x, s = transform(image, scores, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        img = color_jitter(image, rng=rng)
        img, sc = random_crop([img, scores], 24, rng=rng, pad_values=(0, 0.0))
        norm = IMAGENET_NORMALIZATION.numpy(img).transpose(1, 2, 0)
        norm, sc = random_hflip([norm, sc], rng=rng)
        np.testing.assert_array_equal(x, norm.transpose(2, 0, 1))
        np.testing.assert_array_equal(s, sc)


@pytest.mark.parametrize("crop_size", [16, 48])  # a window, and zero padding on both axes
def test_affinity_transform_crops_and_flips_image_and_scores_together(crop_size):
    image, scores = coordinate_sample(30, 40)
    transform = AffinityTrainTransform(IDENTITY, crop_size=crop_size, color_jitter=NO_JITTER)
    flipped = 0
    for seed in range(12):
        x, s = transform(image, scores, np.random.default_rng(seed))
        np.testing.assert_array_equal(x[0], s[..., 0])
        np.testing.assert_array_equal(x[1], s[..., 1])
        inside = x[2] == 7
        assert (s[inside] > 0).all()
        assert (s[~inside] == 0).all() and (x[:, ~inside] == 0).all()
        if crop_size > 30:
            assert inside.sum() == 30 * 40
        # columns of x-coordinates run right-to-left after a flip
        row = s[inside.any(axis=1)][0, :, 1]
        row = row[row > 0]
        step = np.diff(row)
        assert (step == 1).all() or (step == -1).all()
        flipped += int(step[0] == -1)
    assert 0 < flipped < 12


def test_affinity_transform_image_padding_is_black_before_normalising():
    image, scores = coordinate_sample(10, 12)
    transform = AffinityTrainTransform(IMAGENET_NORMALIZATION, crop_size=16, flip=False)
    x, s = transform(image, scores, np.random.default_rng(0))
    outside = s[..., 2] == 0
    black = IMAGENET_NORMALIZATION.numpy(np.zeros((1, 1, 3), dtype=np.uint8))[:, 0, 0]
    np.testing.assert_allclose(x[:, outside], np.broadcast_to(black[:, None], (3, outside.sum())))


def test_affinity_transform_validates_input():
    with pytest.raises(ValueError, match="color_jitter"):
        AffinityTrainTransform(IDENTITY, color_jitter=(0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="crop size"):
        AffinityTrainTransform(IDENTITY, crop_size=0)
    image, scores = coordinate_sample(10, 12)
    with pytest.raises(ValueError, match="scores"):
        AffinityTrainTransform(IDENTITY, crop_size=8)(image, scores[:9], np.random.default_rng(0))
