"""psa_core.random_walk: the sparse walk against a dense float64 reference (docs/design.md §1.4, §3).

The reference below is written from the DESIGN text alone (its own offsets,
from-cells and to-cells; no psa_core layout helpers): the dense N×N matrix A
with A_ij = A_ji = a^β at every pair and 1 on the diagonal, T = A with each
column divided by its sum, result v · T^(2^logt).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from psa_core.affinity import pair_affinities
from psa_core.errors import PsaError
from psa_core.random_walk import random_walk

RADIUS = 5
NUM_OFFSETS = 34
REL_TOL = 1e-4


# -- the dense reference (docs/design.md §1.4) ------------------------------------


def design_offsets(radius: int) -> list[tuple[int, int]]:
    """(0,1)…(0,r-1), then dy = 1…r-1 with dx = -(r-1)…r-1 inside dy² + dx² < r²."""
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-(radius - 1), radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return offsets


def design_from_cells(height: int, width: int, radius: int) -> list[tuple[int, int]]:
    """Rows [0, h-r+1) × columns [r-1, w-r+1), row-major."""
    return [
        (row, col)
        for row in range(0, height - radius + 1)
        for col in range(radius - 1, width - radius + 1)
    ]


def design_num_from(height: int, width: int, radius: int) -> int:
    return len(design_from_cells(height, width, radius))


def dense_affinity(aff: np.ndarray, height: int, width: int, beta: float, radius: int):
    """The dense A of §1.4 in float64 (before column normalisation)."""
    n = height * width
    a = np.eye(n, dtype=np.float64)
    offsets = design_offsets(radius)
    from_cells = design_from_cells(height, width, radius)
    assert aff.shape == (len(offsets), len(from_cells))
    for k, (dy, dx) in enumerate(offsets):
        for m, (row, col) in enumerate(from_cells):
            i = row * width + col
            j = (row + dy) * width + (col + dx)
            assert 0 <= row + dy < height and 0 <= col + dx < width
            a[i, j] = a[j, i] = float(aff[k, m]) ** beta
    return a


def dense_random_walk(aff, cams, beta, logt, radius=RADIUS) -> np.ndarray:
    """v · T^(2^logt) with T = A / column sums, all dense float64."""
    cams = np.asarray(cams, dtype=np.float64)
    channels, height, width = cams.shape
    a = dense_affinity(np.asarray(aff, dtype=np.float64), height, width, beta, radius)
    t = a / a.sum(axis=0, keepdims=True)
    v = cams.reshape(channels, -1)
    out = v @ np.linalg.matrix_power(t, 2**logt)
    return out.reshape(channels, height, width)


# -- inputs -------------------------------------------------------------------


def region_features(rng, height, width, channels=64, regions=4, noise=0.1) -> np.ndarray:
    """AffinityNet-like features: a few Voronoi regions with their own prototype + noise.

    Pairs inside a region get a ≈ 0.9, pairs across regions a ≈ 0.3, so the
    walk has both strong and weak edges.
    """
    centres = rng.uniform([0, 0], [height, width], size=(regions, 2))
    yy, xx = np.mgrid[0:height, 0:width]
    dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    region = dist.argmin(axis=0)
    prototypes = rng.standard_normal((regions, channels))
    feats = prototypes[region] + noise * rng.standard_normal((height, width, channels))
    return np.moveaxis(feats, -1, 0).astype(np.float32)


def make_affinities(rng, source, height, width, radius=RADIUS, channels=64) -> np.ndarray:
    """(n_offsets, n_from) float32 affinities; (n_offsets, 0) for a grid without pairs."""
    n_off = len(design_offsets(radius))
    n_from = design_num_from(height, width, radius)
    if n_from == 0:
        return np.zeros((n_off, 0), dtype=np.float32)
    if source == "uniform":
        return rng.uniform(0.0, 1.0, size=(n_off, n_from)).astype(np.float32)
    assert source == "features"
    feats = torch.from_numpy(region_features(rng, height, width, channels))
    aff = pair_affinities(feats[None], radius=radius)[0].numpy()
    assert aff.shape == (n_off, n_from)
    return aff


def make_cams(rng, channels, height, width) -> np.ndarray:
    """Continuous random scores: exact argmax ties have probability 0."""
    return rng.uniform(0.0, 1.0, size=(channels, height, width)).astype(np.float32)


def seed_of(*parts) -> list[int]:
    return [int(p) if isinstance(p, (int, float)) else sum(map(ord, str(p))) for p in parts]


def assert_matches_dense(sparse, dense):
    sparse = np.asarray(sparse, dtype=np.float64)
    assert sparse.shape == dense.shape
    assert np.isfinite(sparse).all()
    rel = np.abs(sparse - dense).max() / np.abs(dense).max()
    assert rel <= REL_TOL, f"max relative error {rel:.3g} > {REL_TOL}"
    np.testing.assert_array_equal(sparse.argmax(axis=0), dense.argmax(axis=0))
    return rel


# -- 1. agreement with the dense form ------------------------------------------

GRIDS_WITH_PAIRS = [(5, 9), (7, 11), (13, 9), (10, 21), (17, 23), (16, 16)]
GRIDS_WITHOUT_PAIRS = [(3, 4), (4, 12), (5, 8), (1, 1)]


@pytest.mark.parametrize("logt", [0, 3, 8])
@pytest.mark.parametrize("beta", [1, 8])
@pytest.mark.parametrize("source", ["features", "uniform"])
@pytest.mark.parametrize("grid", GRIDS_WITH_PAIRS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_random_walk_matches_dense_reference(grid, source, beta, logt):
    height, width = grid
    rng = np.random.default_rng(seed_of(height, width, source, beta, logt))
    aff = make_affinities(rng, source, height, width)
    assert aff.shape == (NUM_OFFSETS, design_num_from(height, width, RADIUS))
    cams = make_cams(rng, 5, height, width)
    dense = dense_random_walk(aff, cams, beta, logt)
    sparse = random_walk(aff, cams, beta=beta, logt=logt)
    assert_matches_dense(sparse, dense)


def test_random_walk_matches_dense_with_448_channel_features():
    """Full-width AffinityNet features (448 channels), published β and logt."""
    height, width = 11, 14
    rng = np.random.default_rng(448)
    feats = torch.from_numpy(region_features(rng, height, width, channels=448, regions=5))
    aff = pair_affinities(feats[None])[0]
    cams = make_cams(rng, 21, height, width)
    dense = dense_random_walk(aff.numpy(), cams, 8, 8)
    sparse = random_walk(aff, torch.from_numpy(cams))
    assert_matches_dense(sparse.numpy(), dense)


@pytest.mark.parametrize("radius", [3, 4])
def test_random_walk_matches_dense_at_other_radii(radius):
    """The radius is inferred from the offset count (12 at r=3, 22 at r=4)."""
    height, width = 9, 13
    rng = np.random.default_rng(radius)
    for source in ("features", "uniform"):
        aff = make_affinities(rng, source, height, width, radius=radius)
        assert aff.shape[0] == len(design_offsets(radius))
        cams = make_cams(rng, 4, height, width)
        for beta, logt in ((1, 3), (8, 8)):
            dense = dense_random_walk(aff, cams, beta, logt, radius=radius)
            assert_matches_dense(random_walk(aff, cams, beta=beta, logt=logt), dense)


@pytest.mark.parametrize("logt", [0, 3, 8])
@pytest.mark.parametrize("grid", GRIDS_WITHOUT_PAIRS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_grid_without_pairs_returns_the_input(grid, logt):
    height, width = grid
    rng = np.random.default_rng(seed_of(height, width, logt))
    aff = np.zeros((NUM_OFFSETS, 0), dtype=np.float32)
    cams = make_cams(rng, 3, height, width)
    out = random_walk(aff, cams, beta=8, logt=logt)
    np.testing.assert_array_equal(out, cams)
    np.testing.assert_allclose(out, dense_random_walk(aff, cams, 8, logt), rtol=0, atol=0)


# -- 2. types, dtype, shape ----------------------------------------------------


def test_numpy_in_numpy_out_float32():
    rng = np.random.default_rng(2)
    aff = make_affinities(rng, "uniform", 7, 11)
    cams = make_cams(rng, 4, 7, 11).astype(np.float64)
    before = cams.copy()
    out = random_walk(aff, cams, beta=8, logt=2)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (4, 7, 11)
    np.testing.assert_array_equal(cams, before)  # input untouched


def test_torch_in_torch_out_float32():
    rng = np.random.default_rng(3)
    aff = torch.from_numpy(make_affinities(rng, "features", 10, 21))
    cams = torch.from_numpy(make_cams(rng, 6, 10, 21)).double()
    before = cams.clone()
    out = random_walk(aff, cams, beta=8, logt=2)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert out.shape == (6, 10, 21)
    assert out.device == cams.device
    assert torch.equal(cams, before)
    # numpy and torch inputs give the same numbers
    np_out = random_walk(aff.numpy(), cams.numpy(), beta=8, logt=2)
    np.testing.assert_array_equal(np_out, out.numpy())


def test_default_beta_and_logt_are_the_published_ones():
    rng = np.random.default_rng(4)
    aff = make_affinities(rng, "uniform", 7, 11)
    cams = make_cams(rng, 3, 7, 11)
    np.testing.assert_array_equal(random_walk(aff, cams), random_walk(aff, cams, beta=8, logt=8))


# -- 3. invariants of the column-stochastic T -----------------------------------


@pytest.mark.parametrize("logt", [0, 3, 8])
@pytest.mark.parametrize("source", ["features", "uniform"])
def test_all_ones_row_is_a_fixed_point(source, logt):
    """Columns of T sum to 1, so (1ᵀ T)_j = 1: the all-ones score map never changes.

    Up to float32 rounding: 256 steps drift by ~1.6e-5, hence the 1e-4 tolerance.
    """
    height, width = 13, 9
    rng = np.random.default_rng(seed_of(source, logt))
    aff = make_affinities(rng, source, height, width)
    ones = np.ones((3, height, width), dtype=np.float32)
    out = random_walk(aff, ones, beta=8, logt=logt)
    np.testing.assert_allclose(out, ones, rtol=0, atol=REL_TOL)
    # any per-channel constant too (linearity)
    consts = np.array([0.5, 2.0, 7.0], dtype=np.float32)[:, None, None] * ones
    out = random_walk(aff, consts, beta=1, logt=logt)
    np.testing.assert_allclose(out, consts, rtol=REL_TOL, atol=0)


@pytest.mark.parametrize("logt", [0, 8])
def test_degree_weighted_sum_is_conserved(logt):
    """T = A D⁻¹ with A symmetric: Σ_j d_j (v·T)_j = Σ_i v_i d_i for every channel.

    (The plain sum Σ_j (v·T)_j is not conserved; the sum weighted by the
    column sums d of A is.)
    """
    height, width = 10, 21
    rng = np.random.default_rng(seed_of("degree", logt))
    aff = make_affinities(rng, "features", height, width)
    cams = make_cams(rng, 4, height, width)
    degree = dense_affinity(aff.astype(np.float64), height, width, 8, RADIUS).sum(axis=0)
    out = random_walk(aff, cams, beta=8, logt=logt).reshape(4, -1).astype(np.float64)
    before = cams.reshape(4, -1).astype(np.float64) @ degree
    np.testing.assert_allclose(out @ degree, before, rtol=REL_TOL)
    if logt == 0:  # while the plain sum does change
        assert not np.allclose(out.sum(axis=1), cams.reshape(4, -1).sum(axis=1), rtol=1e-3)


# -- 4. bad input ----------------------------------------------------------------


def test_affinities_for_another_grid_are_rejected():
    rng = np.random.default_rng(5)
    cams = make_cams(rng, 3, 7, 11)
    n_from = design_num_from(7, 11, RADIUS)
    for n in (n_from - 1, n_from + 1, 0):
        with pytest.raises(PsaError):
            random_walk(np.full((NUM_OFFSETS, n), 0.5, np.float32), cams)
    # affinities of a 7x12 grid for a 7x11 score map
    with pytest.raises(PsaError):
        random_walk(make_affinities(rng, "uniform", 7, 12), cams)
    # pairs given for a grid that has none
    with pytest.raises(PsaError):
        random_walk(np.full((NUM_OFFSETS, 1), 0.5, np.float32), make_cams(rng, 3, 4, 12))


@pytest.mark.parametrize("num_offsets", [33, 35, 1, 0])
def test_offset_count_matching_no_radius_is_rejected(num_offsets):
    rng = np.random.default_rng(6)
    cams = make_cams(rng, 3, 7, 11)
    aff = np.full((num_offsets, design_num_from(7, 11, RADIUS)), 0.5, np.float32)
    with pytest.raises(PsaError, match="offsets"):
        random_walk(aff, cams)


@pytest.mark.parametrize("shape", [(7, 11), (1, 3, 7, 11), (77,)])
def test_cams_not_three_dimensional_are_rejected(shape):
    rng = np.random.default_rng(7)
    aff = make_affinities(rng, "uniform", 7, 11)
    with pytest.raises(PsaError, match="cams"):
        random_walk(aff, np.zeros(shape, np.float32))


def test_bad_aff_rank_and_logt_are_rejected():
    rng = np.random.default_rng(8)
    aff = make_affinities(rng, "uniform", 7, 11)
    cams = make_cams(rng, 3, 7, 11)
    with pytest.raises(PsaError):
        random_walk(aff.reshape(-1), cams)
    with pytest.raises(PsaError):
        random_walk(aff[None], cams)
    for logt in (-1, 1.5):
        with pytest.raises(PsaError, match="logt"):
            random_walk(aff, cams, logt=logt)


# -- 5. memory is O(N) -------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, re, time
    import torch
    torch.set_num_threads(2)
    from psa_core.random_walk import random_walk

    h, w, channels = 128, 256, 21           # a 2048x1024 image at stride 8
    n_from = (h - 5 + 1) * (w - 2 * 5 + 2)
    gen = torch.Generator().manual_seed(0)
    aff = torch.rand(34, n_from, generator=gen)
    cams = torch.rand(channels, h, w, generator=gen)
    start = time.perf_counter()
    out = random_walk(aff, cams, beta=8, logt=8)
    seconds = time.perf_counter() - start
    print(json.dumps({
        # VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's
        # peak over fork + exec, and pytest's can be large)
        "maxrss_kib": int(re.search("VmHWM:[ \t]+([0-9]+)", open("/proc/self/status").read())[1]),
        "shape": list(out.shape),
        "finite": bool(torch.isfinite(out).all()),
        "seconds": seconds,
    }))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
def test_memory_is_linear_in_the_number_of_cells():
    n = 128 * 256
    dense_bytes = n * n * 4  # one dense float32 N×N matrix: 4.3 GB
    assert dense_bytes > 4.2e9
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_bytes = result["maxrss_kib"] * 1024
    assert result["shape"] == [21, 128, 256]
    assert result["finite"]
    assert peak_bytes < 1.5 * 2**30, f"peak RSS {peak_bytes / 2**30:.2f} GiB"
    assert peak_bytes < dense_bytes / 2
