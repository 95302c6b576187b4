"""Pixel pairs on the stride-8 feature grid and everything built on them (docs/design.md §1.2-§1.4):
the pair layout, pair labels, the affinity loss, the CRF score stacks and AffinityNet's
training (`fit_affinity`).

One definition of the pair layout serves the affinity network, the pair labels
and the random walk:

- offsets `(dy, dx)` from `pair_offsets(radius)`;
- "from" cells are rows `[0, h - radius + 1)` and columns
  `[radius - 1, w - radius + 1)` of an (h, w) grid, taken row-major, so that
  every offset lands inside the grid;
- the "to" cell of from-cell (row, col) and offset (dy, dx) is
  (row + dy, col + dx).

Pair tensors are laid out (n_offsets, n_from) in that order.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from psa_core import io
from psa_core.constants import BACKGROUND_INDEX, FEATURE_STRIDE, IGNORE_INDEX
from psa_core.data import image_paths, verified_image_size
from psa_core.decoded_cache import DecodedCache
from psa_core.errors import PsaError
from psa_core.settings import AffinitySettings, CrfSettings
from psa_core.training import digest, sample_rng, train
from psa_core.transforms import (
    AffinityTrainTransform,
    is_scaling_of,
    to_size_of,
    training_transform,
)

DEFAULT_RADIUS = AffinitySettings.radius
"""Pairs closer than this many feature cells (Euclidean) get an affinity."""


def pair_offsets(radius: int = DEFAULT_RADIUS) -> list[tuple[int, int]]:
    """The (dy, dx) offsets with 0 < dy² + dx² < radius², one per unordered pair.

    Order (docs/design.md §1.2): (0, 1) … (0, radius - 1), then for dy = 1 … radius - 1
    every dx = -(radius - 1) … radius - 1 inside the circle. radius = 5 gives 34.
    """
    if radius < 2:
        raise PsaError(f"affinity radius {radius}: must be at least 2 (the paper uses 5)")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-(radius - 1), radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return offsets


def from_cell_slices(height: int, width: int, radius: int = DEFAULT_RADIUS) -> tuple[slice, slice]:
    """Rows and columns of the from-cells of an (height, width) grid.

    Returns `(rows, cols)` = `(slice(0, height - radius + 1),
    slice(radius - 1, width - radius + 1))`; PsaError if the grid is too small
    to hold a single from-cell.
    """
    check_grid_size(height, width, radius)
    return slice(0, height - radius + 1), slice(radius - 1, width - radius + 1)


def to_cell_slices(
    height: int, width: int, offset: tuple[int, int], radius: int = DEFAULT_RADIUS
) -> tuple[slice, slice]:
    """Rows and columns of the to-cells for one offset: the from-slices moved by (dy, dx)."""
    rows, cols = from_cell_slices(height, width, radius)
    dy, dx = offset
    return slice(rows.start + dy, rows.stop + dy), slice(cols.start + dx, cols.stop + dx)


def num_from_cells(height: int, width: int, radius: int = DEFAULT_RADIUS) -> int:
    """Number of from-cells: (height - radius + 1) · (width - 2·radius + 2)."""
    check_grid_size(height, width, radius)
    return (height - radius + 1) * (width - 2 * radius + 2)


def pair_indices(
    height: int, width: int, radius: int = DEFAULT_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """Flat (row-major) cell indices of every pair.

    Returns:
        from_index: (n_from,) int64, the from-cells.
        to_index: (n_offsets, n_from) int64; `to_index[k, i]` is the partner of
            `from_index[i]` under offset k.
    """
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    rows, cols = from_cell_slices(height, width, radius)
    from_index = grid[rows, cols].reshape(-1)
    to_index = np.stack(
        [
            grid[to_cell_slices(height, width, offset, radius)].reshape(-1)
            for offset in pair_offsets(radius)
        ]
    )
    return from_index, to_index


def check_grid_size(height: int, width: int, radius: int = DEFAULT_RADIUS) -> None:
    """PsaError unless an (height, width) grid has at least one from-cell."""
    if height < radius or width < 2 * radius - 1:
        raise PsaError(
            f"feature grid {height}x{width} is too small for affinity radius {radius}: it needs "
            f"at least {radius} rows and {2 * radius - 1} columns of stride-8 cells; use larger "
            "crops / images or a smaller radius"
        )


def pair_affinities(features: torch.Tensor, radius: int = DEFAULT_RADIUS) -> torch.Tensor:
    """Affinities a_ij = exp(-mean_c |f_i - f_j|) of every pair (docs/design.md §1.3).

    Args:
        features: (B, C, h, w) float, the AffinityNet features.
        radius: pair radius, see `pair_offsets`.

    Returns:
        (B, n_offsets, n_from) in (0, 1]; entry [b, k, i] pairs from-cell i
        (row-major over `from_cell_slices`) with its partner under offset k.
    """
    height, width = features.shape[-2:]
    rows, cols = from_cell_slices(height, width, radius)
    source = features[:, :, rows, cols]
    per_offset = []
    for offset in pair_offsets(radius):
        to_rows, to_cols = to_cell_slices(height, width, offset, radius)
        distance = (features[:, :, to_rows, to_cols] - source).abs().mean(dim=1)
        per_offset.append(torch.exp(-distance).flatten(1))
    return torch.stack(per_offset, dim=1)


# -- affinity labels and loss (docs/design.md §1.2, §1.3) -------------------------

AFFINITY_EPS = 1e-5
"""Added inside the logs and to the pair counts of `affinity_loss` (the reference's 1e-5)."""

NO_SCORE_EPS = 1e-5
"""A cell whose every la / ha score is below this lies outside the image (zero padding)."""


def pair_labels(
    label: np.ndarray, radius: int = DEFAULT_RADIUS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three pair-label maps of a stride-8 label map (docs/design.md §1.2, §3).

    Args:
        label: (h, w) integer label map on the feature grid, e.g. from
            `crf_label_map`; 0 = background, 255 (`IGNORE_INDEX`) = uncertain.
        radius: pair radius, see `pair_offsets`.

    Returns:
        bg_pos, fg_pos, neg: each (n_offsets, n_from) float32 of 0 / 1 in the
        pair layout of this module (entry [k, i] pairs from-cell i with its
        partner under offset k). bg_pos: both cells background; fg_pos: same
        label, not background, both certain; neg: different labels, both
        certain.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"pair_labels: label has shape {label.shape}; expected (h, w)")
    height, width = label.shape
    rows, cols = from_cell_slices(height, width, radius)
    source = label[rows, cols].reshape(1, -1)
    target = np.stack(
        [
            label[to_cell_slices(height, width, offset, radius)].reshape(-1)
            for offset in pair_offsets(radius)
        ]
    )
    certain = (source < IGNORE_INDEX) & (target < IGNORE_INDEX)
    same = source == target
    source_bg = source == BACKGROUND_INDEX
    bg_pos = same & source_bg
    fg_pos = same & ~source_bg & certain
    neg = ~same & certain
    return bg_pos.astype(np.float32), fg_pos.astype(np.float32), neg.astype(np.float32)


def affinity_loss(
    aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AffinityNet loss `bg/4 + fg/4 + neg/2` (docs/design.md §1.3).

    `bg = Σ -bg_pos·log(a + ε) / (Σ bg_pos + ε)`, `fg` likewise with fg_pos,
    `neg = Σ -neg·log(1 + ε - a) / (Σ neg + ε)`, ε = `AFFINITY_EPS`. The sums
    run over the whole batch (every pair of every image counts once, as in the
    reference's train_aff.py), not per image. Computed in float32 even when
    `aff` comes out of autocast in half precision.

    Args:
        aff: (B, n_offsets, n_from) or (n_offsets, n_from) affinities in (0, 1].
        bg_pos, fg_pos, neg: 0 / 1 pair labels of the same shape (any float or
            bool dtype), e.g. stacked `pair_labels` outputs.

    Returns:
        loss: scalar float32 tensor with gradient.
        parts: detached scalar float32 tensors "bg_loss", "fg_loss", "neg_loss"
            and the pair counts "bg_count", "fg_count", "neg_count" (no ε). A
            part with no pairs is 0.
    """
    if aff.dim() not in (2, 3):
        raise ValueError(
            f"affinity_loss: aff has shape {tuple(aff.shape)}; expected (B, n_offsets, n_from) "
            "or (n_offsets, n_from)"
        )
    aff = aff.float()
    labels = {}
    for name, value in (("bg", bg_pos), ("fg", fg_pos), ("neg", neg)):
        value = torch.as_tensor(value, device=aff.device).float()
        if value.shape != aff.shape:
            raise ValueError(
                f"affinity_loss: {name} labels have shape {tuple(value.shape)}, aff has "
                f"{tuple(aff.shape)}; they must match"
            )
        labels[name] = value
    counts = {name: value.sum() for name, value in labels.items()}
    bg_loss = (-labels["bg"] * torch.log(aff + AFFINITY_EPS)).sum() / (counts["bg"] + AFFINITY_EPS)
    fg_loss = (-labels["fg"] * torch.log(aff + AFFINITY_EPS)).sum() / (counts["fg"] + AFFINITY_EPS)
    neg_loss = (-labels["neg"] * torch.log(1.0 + AFFINITY_EPS - aff)).sum() / (
        counts["neg"] + AFFINITY_EPS
    )
    loss = bg_loss / 4 + fg_loss / 4 + neg_loss / 2
    parts = {
        "bg_loss": bg_loss.detach(),
        "fg_loss": fg_loss.detach(),
        "neg_loss": neg_loss.detach(),
        "bg_count": counts["bg"].detach(),
        "fg_count": counts["fg"].detach(),
        "neg_count": counts["neg"].detach(),
    }
    return loss, parts


def crf_label_map(
    la: np.ndarray, ha: np.ndarray, class_ids: np.ndarray | None = None
) -> np.ndarray:
    """Labels from the low- and high-alpha CRF score stacks (docs/design.md §1.2).

    The one home of this rule, for the full-resolution label PNGs and the
    stride-8 training labels alike: `argmax(la)`; where that is background,
    255 (uncertain); where `argmax(ha)` is background, 0 (confident
    background); where every score of both stacks is below `NO_SCORE_EPS`
    (zero padding outside the image), 255. Ties go to the first stack entry.

    Args:
        la: (C + 1, H, W) float scores, background first, then the present
            classes (the low-alpha CRF marginals, or their 8×8 pooling).
        ha: (C + 1, H, W) float, the high-alpha stack, same layout.
        class_ids: optional (C,) 0-based ids of the present classes, in stack
            order. With it the foreground values are segmentation indices
            class_id + 1 (VOC PNG values); without, stack positions 1 … C
            (enough for `pair_labels`, which only compares labels).

    Returns:
        (H, W) uint8: 0 background, foreground indices, 255 uncertain.
    """
    la = np.asarray(la)
    ha = np.asarray(ha)
    if la.ndim != 3 or la.shape != ha.shape or la.shape[0] < 1:
        raise ValueError(
            f"crf_label_map: la {la.shape} and ha {ha.shape} must both be (C + 1, H, W) "
            "stacks, background first"
        )
    num_fg = la.shape[0] - 1
    if class_ids is None:
        values = np.arange(num_fg + 1)
    else:
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        if class_ids.shape != (num_fg,):
            raise ValueError(
                f"crf_label_map: {class_ids.size} class ids for {num_fg} foreground score maps"
            )
        values = np.concatenate([[BACKGROUND_INDEX], class_ids + 1])
    if ((values[1:] < 1) | (values[1:] >= IGNORE_INDEX)).any():
        raise ValueError(
            f"crf_label_map: foreground values {values[1:].tolist()} do not fit below "
            f"{IGNORE_INDEX} in uint8; class ids must be in [0, {IGNORE_INDEX - 2}]"
        )
    la_arg = la.argmax(axis=0)
    label = values.astype(np.uint8)[la_arg]
    label[la_arg == 0] = IGNORE_INDEX
    label[ha.argmax(axis=0) == 0] = BACKGROUND_INDEX
    no_score = np.maximum(la.max(axis=0), ha.max(axis=0)) < NO_SCORE_EPS
    label[no_score] = IGNORE_INDEX
    return label


def pool_scores(scores: np.ndarray, stride: int = FEATURE_STRIDE) -> np.ndarray:
    """Average-pool the two leading (H, W) axes in stride × stride blocks (docs/design.md §1.2).

    Where H or W is not a multiple of `stride` the last blocks are padded
    with zeros and still divided by stride² (skimage `block_reduce` with
    cval=0, as the reference's `AvgPool2d`). Channel-last, like the spatial
    functions of `psa_core.transforms`; move a (C, H, W) stack's channel
    axis last with `np.moveaxis(scores, 0, -1)`.

    Args:
        scores: (H, W) or (H, W, C) float scores.
        stride: block side, the feature stride.

    Returns:
        (ceil(H / stride), ceil(W / stride)[, C]) float32.
    """
    if stride < 1:
        raise ValueError(f"pool_scores: stride {stride} must be at least 1")
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim < 2:
        raise ValueError(f"pool_scores: scores have shape {scores.shape}; expected (H, W[, C])")
    height, width = scores.shape[:2]
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h, pad_w = out_h * stride - height, out_w * stride - width
    if pad_h or pad_w:
        pad = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (scores.ndim - 2)
        scores = np.pad(scores, pad)
    blocks = scores.reshape(out_h, stride, out_w, stride, *scores.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def affinity_training_labels(
    la: np.ndarray, ha: np.ndarray, radius: int = DEFAULT_RADIUS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair labels of one augmented training sample (docs/design.md §1.2).

    Pools both score stacks to the stride-8 grid (`pool_scores`), labels the
    cells (`crf_label_map`, stack positions) and pairs them (`pair_labels`).

    Args:
        la, ha: (H, W, C + 1) float scores at pixel resolution, channel-last,
            background first, already cropped and flipped with the image
            (the two halves of `AffinityTrainTransform`'s score output).
        radius: pair radius, see `pair_offsets`.

    Returns:
        bg_pos, fg_pos, neg: (n_offsets, n_from) float32 each, for the
        (ceil(H / 8), ceil(W / 8)) grid.
    """
    la_cells = np.moveaxis(pool_scores(la), -1, 0)
    ha_cells = np.moveaxis(pool_scores(ha), -1, 0)
    return pair_labels(crf_label_map(la_cells, ha_cells), radius)


# -- CRF score stacks and AffinityNet training (docs/design.md §1.2, §1.3) ------------------

LOW, HIGH = 0, 1
"""Index of the low- and high-alpha stack in a CRF shard's (2, C + 1, H, W) datasets."""


def image_at_size_of(
    path: Path, name: str, maps_shape: Sequence[int], image: np.ndarray, what: str
) -> np.ndarray:
    """The image (H, W, 3) at the size of its score maps of shape (..., h, w) from `path`:
    itself, or scaled down when the maps were made at its working size (docs/design.md
    §1.8).

    PsaError naming the shard for any other size.
    """
    scaled = to_size_of(image, maps_shape[-2:])
    if scaled is None:
        raise PsaError(
            f"{path}: {what} of '{name}' are {maps_shape[-1]}x{maps_shape[-2]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}; they come from another dataset: delete the "
            "shard and rerun the stage that makes it"
        )
    return scaled


def crf_stacks_job(job: tuple[np.ndarray, np.ndarray, CrfSettings]) -> np.ndarray:
    """(image, cams, the `crf` section) → the (2, C + 1, H, W) float32 la / ha stacks of
    docs/design.md §1.2; a picklable job for a worker process."""
    from psa_core.crf import crf_score_stacks

    image, cams, settings = job
    la, ha = crf_score_stacks(
        image,
        cams,
        alpha_low=settings.alpha_low,
        alpha_high=settings.alpha_high,
        **settings.kernel_options(),
    )
    return np.stack([la, ha])


class AffinityTrainDataset(Dataset):
    """Images, their CRF score stacks and the pair labels of AffinityNet (docs/design.md §1.2).

    Keys are `(epoch, index)`; sample `index` of `epoch` is augmented with
    `sample_rng(seed, epoch, index)`: colour jitter, then one crop and flip of
    the image and both score stacks together (`AffinityTrainTransform`),
    then 8×8 pooling, the label rules and the pair masks
    (`affinity_training_labels`). Stacks are read from the shards one image
    at a time, so a VOC-sized split needs no memory for them beyond a
    `DecodedCache` of `cache_mb` MB (0 = off) that keeps images and stacks
    (as stored) across epochs. Stacks at an image's working size
    (docs/design.md §1.8) get the image scaled to them.

    Items: (image (3, crop, crop) float32, bg_pos, fg_pos, neg: each
    (n_offsets, n_from) float32).
    """

    def __init__(
        self,
        images: str | os.PathLike | Mapping[str, Path],
        names: Sequence[str],
        shards: Mapping[str, Path],
        transform: AffinityTrainTransform,
        seed: int,
        radius: int = DEFAULT_RADIUS,
        cache_mb: float = 0,
    ):
        if not names:
            raise PsaError("training set: the image list is empty; check the split")
        self.names = list(names)
        self.paths = image_paths(images, self.names)
        self.shards = [Path(shards[n]) for n in self.names]
        self._check_sizes()
        self.transform = transform
        self.seed = seed
        self.radius = radius
        self.cache = DecodedCache(len(self.names), cache_mb)

    def _check_sizes(self) -> None:
        """Every image decodes and matches its CRF stacks, checked before training starts."""
        shapes: dict[Path, dict[str, tuple[int, ...]]] = {}
        for name, path, shard in zip(self.names, self.paths, self.shards, strict=True):
            if shard not in shapes:
                shapes[shard] = io.read_score_shapes(shard)
            size_hw = shapes[shard][name][-2:]
            image_w, image_h = verified_image_size(path)
            if not is_scaling_of(size_hw, (image_h, image_w)):
                raise PsaError(
                    f"{shard}: CRF scores of '{name}' are {size_hw[1]}x{size_hw[0]} but the "
                    f"image is {image_w}x{image_h}; they come from another dataset: delete the "
                    "shard and rerun crf_labels"
                )

    def __len__(self) -> int:
        return len(self.names)

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image `index` at its stacks' size (H, W, 3) uint8 and the (2, C + 1, H, W)
        stacks as stored (float16 or float32): the part of a sample no epoch changes."""
        name, shard = self.names[index], self.shards[index]
        stack, _ = io.read_score(shard, name, dtype=None)
        full = io.read_image(self.paths[index])
        return image_at_size_of(shard, name, stack.shape, full, "CRF scores"), stack

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        epoch, index = key
        image, stored = self.cache.get(index, self.decode)
        stack = stored.astype(np.float32)
        num_scores = stack.shape[1]
        scores = np.moveaxis(stack.reshape(-1, *stack.shape[-2:]), 0, -1)  # (H, W, 2(C + 1))
        x, scores = self.transform(image, scores, sample_rng(self.seed, epoch, index))
        labels = affinity_training_labels(
            scores[..., :num_scores], scores[..., num_scores:], self.radius
        )
        return (torch.from_numpy(x), *(torch.from_numpy(label) for label in labels))

    def fingerprint(self) -> dict[str, Any]:
        """What makes the data of a run: names, CRF settings, augmentation, seed, radius."""
        shard_attrs = {}
        for shard in dict.fromkeys(self.shards):
            attrs = io.read_score_shard_attrs(shard)
            shard_attrs[shard.name] = {k: v for k, v in attrs.items() if k != "psa_core_version"}
        return {
            "kind": "affinity",
            "num_images": len(self.names),
            "names": digest(self.names),
            "crf": digest(shard_attrs),
            "transform": dataclasses.asdict(self.transform),
            "seed": self.seed,
            "radius": self.radius,
        }


def affinity_pair_loss(
    model: nn.Module, batch: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
    """The AffinityNet loss of a batch (docs/design.md §1.3); parts: the three terms, the pair counts."""
    images, bg_pos, fg_pos, neg = batch
    return affinity_loss(model(images), bg_pos, fg_pos, neg)


def fit_affinity(
    model: nn.Module,
    images: str | os.PathLike | Mapping[str, Path],
    names: Sequence[str],
    shards: Mapping[str, Path],
    settings: AffinitySettings,
    *,
    seed: int = 0,
    **loop: Any,
) -> dict[str, Any]:
    """Train AffinityNet (docs/design.md §1.3) on CRF score shards, on the shared loop.

    Args:
        model: an affinity model (`create_model(backbone, "affinity")`),
            initial weights loaded.
        names: training images; shards: name → CRF shard holding its stacks.
        settings: the `affinity` section (optimiser, augmentation; defaults published).
        seed: data order, augmentation, dropout.
        loop: the other keywords of `psa_core.training.train` (out_weights,
            checkpoint_path, log_csv, device, …).
    """
    transform = training_transform(AffinityTrainTransform, model.normalization, settings)
    dataset = AffinityTrainDataset(
        images, names, shards, transform, seed, model.radius, settings.image_cache_mb
    )
    return train(model, dataset, affinity_pair_loss, settings, seed=seed, **loop)
