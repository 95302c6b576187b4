"""Pixel pairs on the stride-8 feature grid and everything built on them (DESIGN.md §1.2-§1.4).

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

import numpy as np
import torch

from psa_core.errors import PsaError

DEFAULT_RADIUS = 5
"""Pairs closer than this many feature cells (Euclidean) get an affinity."""


def pair_offsets(radius: int = DEFAULT_RADIUS) -> list[tuple[int, int]]:
    """The (dy, dx) offsets with 0 < dy² + dx² < radius², one per unordered pair.

    Order (DESIGN.md §1.2): (0, 1) … (0, radius - 1), then for dy = 1 … radius - 1
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
    """Affinities a_ij = exp(-mean_c |f_i - f_j|) of every pair (DESIGN.md §1.3).

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
