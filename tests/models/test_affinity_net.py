"""AffinityNet's pair affinities against a double loop over cells and offsets."""

from __future__ import annotations

import math

import pytest
import torch

from psa_core.affinity import pair_affinities, pair_offsets
from psa_core.models import build_model


def brute_force_affinities(f: torch.Tensor, radius: int) -> torch.Tensor:
    """f: (B, C, h, w) → (B, n_offsets, n_from), one pair at a time (docs/design.md §1.2-1.3, §3)."""
    batch, _, h, w = f.shape
    offsets = pair_offsets(radius)
    from_cells = [(r, c) for r in range(h - radius + 1) for c in range(radius - 1, w - radius + 1)]
    out = torch.zeros(batch, len(offsets), len(from_cells), dtype=f.dtype)
    for b in range(batch):
        for k, (dy, dx) in enumerate(offsets):
            for i, (r, c) in enumerate(from_cells):
                distance = (f[b, :, r, c] - f[b, :, r + dy, c + dx]).abs().mean()
                out[b, k, i] = math.exp(-float(distance))
    return out


@pytest.mark.parametrize("radius", [5, 3])
def test_affinity_model_matches_brute_force(radius):
    torch.manual_seed(0)
    model = build_model("tiny", "affinity", radius=radius).eval()
    x = torch.randn(2, 3, 60, 90)  # grid 8 x 12
    with torch.no_grad():
        aff = model(x)
        f = model.features(x)
    assert f.shape == (2, 448, 8, 12)
    expected = brute_force_affinities(f.double(), radius).float()
    assert (
        aff.shape
        == expected.shape
        == (2, len(pair_offsets(radius)), (8 - radius + 1) * (12 - 2 * radius + 2))
    )
    torch.testing.assert_close(aff, expected, rtol=1e-5, atol=1e-6)


def test_pair_affinities_on_a_hand_made_grid():
    # one channel; f = column index, so |f_i - f_j| = |dx| for every pair
    h, w = 5, 9
    f = torch.arange(w, dtype=torch.float64).repeat(h, 1)[None, None]
    aff = pair_affinities(f, radius=5)
    assert aff.shape == (1, 34, 1)  # the only from-cell is (0, 4)
    for k, (_, dx) in enumerate(pair_offsets(5)):
        assert aff[0, k, 0].item() == pytest.approx(math.exp(-abs(dx)))


def test_affinity_gradients_flow_to_the_features():
    f = torch.randn(1, 4, 6, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pair_affinities(t, radius=3), (f,))
