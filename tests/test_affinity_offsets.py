"""psa_core.affinity: the pair layout shared by AffinityNet, pair labels and the random walk."""

from __future__ import annotations

import numpy as np
import pytest

from psa_core.affinity import (
    from_cell_slices,
    num_from_cells,
    pair_indices,
    pair_offsets,
    to_cell_slices,
)
from psa_core.errors import PsaError

# docs/design.md §1.2, written out by hand: (0,1)…(0,4), then dy = 1…4 with dx = -4…4
# inside the circle dy² + dx² < 25.
EXPECTED_RADIUS_5 = [
    (0, 1), (0, 2), (0, 3), (0, 4),
    (1, -4), (1, -3), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4),
    (2, -4), (2, -3), (2, -2), (2, -1), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4),
    (3, -3), (3, -2), (3, -1), (3, 0), (3, 1), (3, 2), (3, 3),
    (4, -2), (4, -1), (4, 0), (4, 1), (4, 2),
]  # fmt: skip


def test_pair_offsets_radius_5_exact_order():
    assert pair_offsets(5) == EXPECTED_RADIUS_5
    assert pair_offsets() == EXPECTED_RADIUS_5
    assert len(pair_offsets(5)) == 34


def test_pair_offsets_radius_2_and_3():
    assert pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert pair_offsets(3) == [
        (0, 1), (0, 2),
        (1, -2), (1, -1), (1, 0), (1, 1), (1, 2),
        (2, -2), (2, -1), (2, 0), (2, 1), (2, 2),  # 4 + 4 < 9
    ]  # fmt: skip


def test_pair_offsets_rejects_radius_below_2():
    with pytest.raises(PsaError, match="radius"):
        pair_offsets(1)


def test_from_cell_slices_match_design():
    # rows [0, h - r + 1), cols [r - 1, w - r + 1)
    assert from_cell_slices(10, 12, 5) == (slice(0, 6), slice(4, 8))
    assert num_from_cells(10, 12, 5) == 6 * 4
    assert to_cell_slices(10, 12, (4, -2), 5) == (slice(4, 10), slice(2, 6))


def test_every_to_cell_is_inside_the_grid():
    h, w = 7, 11
    for dy, dx in pair_offsets(5):
        rows, cols = to_cell_slices(h, w, (dy, dx), 5)
        assert rows.start >= 0 and rows.stop <= h
        assert cols.start >= 0 and cols.stop <= w


def test_pair_indices_brute_force():
    h, w, r = 6, 10, 4
    from_index, to_index = pair_indices(h, w, r)
    expected_from = [row * w + col for row in range(h - r + 1) for col in range(r - 1, w - r + 1)]
    np.testing.assert_array_equal(from_index, expected_from)
    for k, (dy, dx) in enumerate(pair_offsets(r)):
        expected_to = [(i // w + dy) * w + (i % w + dx) for i in expected_from]
        np.testing.assert_array_equal(to_index[k], expected_to)


def test_grid_too_small_is_a_user_error():
    with pytest.raises(PsaError, match="too small"):
        from_cell_slices(4, 20, 5)
    with pytest.raises(PsaError, match="too small"):
        num_from_cells(20, 8, 5)
