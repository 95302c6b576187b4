"""The random walk of PSA, without the dense N×N matrix (docs/design.md §1.4).

On an (h, w) grid of N = h·w stride-8 cells, AffinityNet gives an affinity
a_ij for every pair of the layout of `psa_core.affinity` (34 offsets at
radius 5). The published code builds the dense matrix

    A_ij = a_ij^β at every pair (both directions), 1 on the diagonal, 0 elsewhere
    T    = A with each column divided by its sum

and squares T `logt` times: O(N²) memory, O(N³) time. A has at most
2·n_offsets + 1 non-zeros a column, so applying T to the (C, N) score matrix
v one step at a time, t = 2^logt steps, gives the same `v · T^t` with
O(t · N · n_offsets · C) work and O(N · n_offsets) memory. We keep T as a
sparse CSR matrix (`transition_matrix`) and multiply.

Cells of a grid too small for a single pair (fewer than `radius` rows or
2·radius − 1 columns) have only their diagonal: T is the identity there and
the walk returns the scores unchanged.

The walk is linear in its input, and only the background row of `walk_input`
depends on the background exponent alpha: `alpha_sweep_masks` scores a sweep
over alpha from one walk of the class rows and one more walked row per alpha.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from psa_core.affinity import check_grid_size, pair_indices, pair_offsets, pool_scores
from psa_core.constants import BACKGROUND_INDEX, FEATURE_STRIDE
from psa_core.crf import background_score, score_stack
from psa_core.errors import PsaError
from psa_core.settings import RandomWalkSettings

DEFAULT_BETA = RandomWalkSettings.beta
"""Exponent applied to the affinities (published β = 8)."""

DEFAULT_LOGT = RandomWalkSettings.logt
"""log2 of the number of walk steps (published: t = 2^8 = 256)."""


def radius_of(num_offsets: int) -> int:
    """The pair radius whose layout has `num_offsets` offsets (34 → 5)."""
    for radius in range(2, 64):
        count = len(pair_offsets(radius))
        if count == num_offsets:
            return radius
        if count > num_offsets:
            break
    raise PsaError(
        f"{num_offsets} affinity offsets match no pair radius; expected the layout of "
        "psa_core.affinity.pair_offsets (34 at radius 5)"
    )


def grid_pairs(height: int, width: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(from_index (n_offsets·n_from,), to_index (same)) flat cell indices, offset-major.

    Empty for a grid too small to hold a pair.
    """
    try:
        check_grid_size(height, width, radius)
    except PsaError:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    from_index, to_index = pair_indices(height, width, radius)
    return np.repeat(from_index[None], to_index.shape[0], axis=0).reshape(-1), to_index.reshape(-1)


@functools.lru_cache(maxsize=16)
def _transition_layout(
    height: int, width: int, radius: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where A's entries go in the CSR arrays of Tᵀ, which depends on the grid only.

    Entries in the order [pairs i→j, pairs j→i, diagonal]: (column of A (N_entries,),
    their order in Tᵀ's CSR values, crow_indices (N + 1,), col_indices (N_entries,)).
    Built once per grid size and device: sorting the entries of every image
    (`coalesce`) took a quarter to a third of the walk's time on a 2-core CPU.
    """
    src, dst = grid_pairs(height, width, radius)
    n = height * width
    diag = np.arange(n)
    rows = np.concatenate([src, dst, diag])  # A's row i of each entry ...
    cols = np.concatenate([dst, src, diag])  # ... and its column j: Tᵀ[j, i]
    order = np.lexsort((rows, cols))  # Tᵀ's row-major order; no entry repeats
    crow = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))])
    # int32 indices: the same products, a quarter faster on the CPU; CUDA keeps the
    # int64 layout the GPU runs were measured with
    index_dtype = torch.int32 if device.type == "cpu" else torch.int64
    return (
        torch.from_numpy(cols).to(device),
        torch.from_numpy(order).to(device),
        torch.from_numpy(crow).to(device, index_dtype),
        torch.from_numpy(rows[order]).to(device, index_dtype),
    )


def transition_matrix(
    aff: torch.Tensor, height: int, width: int, beta: float = DEFAULT_BETA
) -> torch.Tensor:
    """The transposed transition matrix Tᵀ = D⁻¹ A as an (N, N) sparse CSR tensor.

    A is symmetric, so row j of Tᵀ is column j of T: A's column j divided by
    its sum d_j. `(Tᵀ @ V)` with V = vᵀ (N, C) is one walk step `v · T`.

    Args:
        aff: (n_offsets, n_from) affinities in [0, 1] in the pair layout.
        height, width: the grid.
        beta: exponent of the affinities.
    """
    num_offsets = aff.shape[0]
    radius = radius_of(num_offsets)
    n = height * width
    device, dtype = aff.device, aff.dtype
    cols, order, crow, col_indices = _transition_layout(height, width, radius, device)
    num_pairs = (cols.numel() - n) // 2
    if aff.numel() != num_pairs:
        raise PsaError(
            f"affinities have shape {tuple(aff.shape)} but a {height}x{width} grid at radius "
            f"{radius} has {num_offsets}x{num_pairs // max(num_offsets, 1)} pairs; "
            "they must come from the same image"
        )
    values = aff.reshape(-1).clamp_min(0) ** beta
    vals = torch.cat([values, values, torch.ones(n, device=device, dtype=dtype)])
    degree = torch.zeros(n, device=device, dtype=dtype).index_add_(0, cols, vals)
    vals = vals / degree[cols]  # column j of A over d_j
    # Tᵀ[j, i] = A[i, j] / d_j: rows of Tᵀ are the columns of A.
    with warnings.catch_warnings():  # "CSR support is in beta": the CSR matmul is what we need
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow, col_indices, vals[order], (n, n), check_invariants=False
        )


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """The walk's sparse products on one CPU thread (torch's count restored after).

    Each product is well under a millisecond of work: a second thread gains
    nothing, and where another process holds a core every product waits for the
    descheduled thread, 20 to 60 times slower (benchmarks/RESULTS.md).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_walk(
    aff: torch.Tensor | np.ndarray,
    cams: torch.Tensor | np.ndarray,
    beta: float = DEFAULT_BETA,
    logt: int = DEFAULT_LOGT,
) -> torch.Tensor | np.ndarray:
    """Propagate scores over the affinity graph: `v · T^(2^logt)` (docs/design.md §1.4).

    Args:
        aff: (n_offsets, n_from) pair affinities for the (h, w) grid of
            `cams`, in the layout of `psa_core.affinity` (AffinityNet's output
            for one image).
        cams: (C, h, w) scores on the same grid, background row included and
            already 8×8-pooled.
        beta: affinity exponent β.
        logt: the walk takes 2^logt steps.

    Returns:
        (C, h, w) float32 propagated scores; a numpy array for numpy `cams`,
        else a tensor on `cams`' device.
    """
    as_numpy = isinstance(cams, np.ndarray)
    cams_t = torch.as_tensor(cams, dtype=torch.float32)
    if cams_t.dim() != 3:
        raise PsaError(f"cams have shape {tuple(cams_t.shape)}; expected (C, h, w)")
    if logt < 0 or int(logt) != logt:
        raise PsaError(f"logt {logt}: must be a non-negative integer")
    aff_t = torch.as_tensor(aff, dtype=torch.float32, device=cams_t.device)
    if aff_t.dim() != 2:
        raise PsaError(f"affinities have shape {tuple(aff_t.shape)}; expected (n_offsets, n_from)")
    channels, height, width = cams_t.shape
    transition = transition_matrix(aff_t, height, width, beta)
    scores = cams_t.reshape(channels, -1).T.contiguous()  # (N, C)
    with _one_cpu_thread(scores.device):
        for _ in range(2 ** int(logt)):
            scores = transition @ scores
    out = scores.T.reshape(channels, height, width).contiguous()
    return out.cpu().numpy() if as_numpy else out


def padded_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) padded bottom / right to multiples of the feature stride (docs/design.md §1.4)."""
    pad = FEATURE_STRIDE
    return -(-height // pad) * pad, -(-width // pad) * pad


def walk_input(cams: np.ndarray, alpha: float) -> np.ndarray:
    """The walk's start: background (1 − max cam)^alpha stacked on the CAMs, padded, 8×8-pooled.

    Args:
        cams: (C, H, W) float in [0, 1], the present classes' CAMs.
        alpha: background exponent (published alpha_rw = 16).

    Returns:
        (C + 1, h, w) float32 on the stride-8 grid of the padded image,
        background first.
    """
    return _padded_pooled(score_stack(cams, alpha))


def _padded_pooled(stack: np.ndarray) -> np.ndarray:
    """(C, H, W) scores zero-padded like the image and 8×8-pooled: (C, h, w) float32."""
    height, width = stack.shape[1:]
    pad_h, pad_w = padded_size(height, width)
    stack = np.pad(stack, ((0, 0), (0, pad_h - height), (0, pad_w - width)))
    return np.ascontiguousarray(np.moveaxis(pool_scores(np.moveaxis(stack, 0, -1)), -1, 0))


def _upsampled(scores: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) walked scores → (C, H, W): bilinear ×8 to the padded size, cropped."""
    height, width = size_hw
    grid = scores.shape[-2:]
    up = F.interpolate(
        scores[None],
        size=(grid[0] * FEATURE_STRIDE, grid[1] * FEATURE_STRIDE),
        mode="bilinear",
        align_corners=False,
    )
    return up[0, :, :height, :width]


def _segmentation_lut(class_ids: np.ndarray) -> np.ndarray:
    """Stack position → segmentation index (0 background, class id + 1), uint8."""
    ids = np.asarray(class_ids, dtype=np.int64) + 1
    return np.concatenate([[BACKGROUND_INDEX], ids]).astype(np.uint8)


def crf_refined(up: torch.Tensor, image: np.ndarray) -> np.ndarray:
    """Stack positions of the dense-CRF labelling of upsampled walked scores (PSA's kernels).

    Each pixel's (C + 1) scores, clipped at 0, are divided by their sum: the
    probabilities whose argmax is the plain walk's mask. They are the unary of
    `psa_core.crf.crf_inference` with the image's colours. The paper reports
    its synthesized labels with this step (CAM + RW + dCRF); the walk's grid is
    8 px coarse, and the CRF moves the masks' outlines onto the image's edges.

    Args:
        up: (C + 1, H, W) walked scores at the image's size (`_upsampled`).
        image: (H, W, 3) uint8 RGB at the same size.

    Returns:
        (H, W) int64 stack positions (0 background).
    """
    from psa_core.crf import crf_inference

    probs = up.float().clamp_min(0)
    probs = probs / probs.sum(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return crf_inference(image, probs.cpu().numpy()).argmax(axis=0)


def scores_to_mask(
    scores: np.ndarray | torch.Tensor,
    size_hw: tuple[int, int],
    class_ids: np.ndarray,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Propagated scores → a segmentation: bilinear resize to the padded size, crop, argmax
    (with `image`, the dense CRF's labelling instead: `crf_refined`).

    Args:
        scores: (C + 1, h, w) float, background first (the walk's output).
        size_hw: the original image's (H, W).
        class_ids: (C,) 0-based ids of the present classes, in stack order.
        image: (H, W, 3) uint8 RGB to refine the mask with, or None.

    Returns:
        (H, W) uint8 segmentation indices (0 background, class id + 1).
    """
    up = _upsampled(torch.as_tensor(scores, dtype=torch.float32), size_hw)
    if image is not None:
        return _segmentation_lut(class_ids)[crf_refined(up, image)]
    # max(dim).indices is argmax (the first maximum on ties), many times faster on the CPU
    return _segmentation_lut(class_ids)[up.max(dim=0).indices.cpu().numpy()]


def alpha_sweep_masks(
    aff: torch.Tensor | np.ndarray,
    cams: np.ndarray,
    walked: torch.Tensor | np.ndarray,
    class_ids: np.ndarray,
    alphas: Sequence[float],
    *,
    walked_alpha: float,
    beta: float = DEFAULT_BETA,
    logt: int = DEFAULT_LOGT,
    device: torch.device | str = "cpu",
    image: np.ndarray | None = None,
) -> np.ndarray:
    """The walk's masks at every background exponent of `alphas` (docs/design.md §1.5).

    Mask `a` equals `scores_to_mask(random_walk(aff, walk_input(cams, a)), (H, W),
    class_ids, image)`, but the walk is linear and only the background row of its input
    depends on alpha: the class rows come from `walked` (the walk at `walked_alpha`,
    as the random-walk stage stored it), the background rows of the other alphas
    walk together in one call over one transition matrix, and the class rows are
    upsampled (and, without `image`, maximised) once.

    Args:
        aff: (n_offsets, n_from) pair affinities of the image (`random_walk`).
        cams: (C, H, W) float in [0, 1], the present classes' CAMs the walk started from.
        walked: (C + 1, h, w) float32, `random_walk(aff, walk_input(cams, walked_alpha))`.
        class_ids: (C,) 0-based ids of the present classes, in stack order.
        alphas: (A,) background exponents to score.
        walked_alpha: the background exponent of `walked`.
        beta, logt: the walk's, as `random_walk`.
        device: where the walk, the upsampling and the argmax run.
        image: (H, W, 3) uint8 RGB at the CAMs' size: each alpha's mask is the dense
            CRF's labelling (`crf_refined`, one CRF per alpha); None for the plain argmax.

    Returns:
        (A, H, W) uint8 segmentation indices (0 background, class id + 1), one mask per alpha.
    """
    if walked.shape[0] != len(class_ids) + 1 or tuple(walked.shape[1:]) != tuple(
        d // FEATURE_STRIDE for d in padded_size(*cams.shape[1:])
    ):
        raise PsaError(
            f"walked scores have shape {tuple(walked.shape)} but the CAMs {tuple(cams.shape)} "
            f"of {len(class_ids)} classes start a walk of shape (C + 1, h, w) on their stride-8 "
            "grid; they must come from the same image (rerun the random-walk stage)"
        )
    device = torch.device(device)
    walked_t = torch.as_tensor(walked, dtype=torch.float32).to(device)
    others = [float(a) for a in alphas if float(a) != float(walked_alpha)]
    backgrounds = {float(walked_alpha): walked_t[0]}
    if others:
        base = background_score(cams, 1.0)  # 1 − max cam; background_score(cams, a) = base^a
        start = np.power(base, np.asarray(others, np.float32)[:, None, None])  # (A', H, W)
        start_t = torch.from_numpy(_padded_pooled(start)).to(device)
        aff_t = torch.as_tensor(aff, dtype=torch.float32).to(device)
        backgrounds.update(zip(others, random_walk(aff_t, start_t, beta, logt), strict=True))
    size = cams.shape[1:]
    if image is not None:
        classes_up = (
            _upsampled(walked_t[1:], size)
            if walked_t.shape[0] > 1
            else walked_t.new_zeros((0, *size))  # no present class
        )
        index = np.stack(
            [
                crf_refined(
                    torch.cat([_upsampled(backgrounds[float(a)][None], size), classes_up]), image
                )
                for a in alphas
            ]
        )
        return _segmentation_lut(class_ids)[index]
    if walked_t.shape[0] > 1:
        # argmax over (background, classes) is the background where it is not below
        # the best class (argmax takes the first maximum), else that class
        best = _upsampled(walked_t[1:], size).max(dim=0)
        best_value, best_index = best.values, best.indices + 1
    else:  # no present class: all background
        best_value = torch.full(size, -torch.inf, device=device)
        best_index = torch.zeros(size, dtype=torch.int64, device=device)
    index = torch.stack(
        [
            torch.where(
                _upsampled(backgrounds[float(a)][None], size)[0] >= best_value, 0, best_index
            )
            for a in alphas
        ]
    )
    return _segmentation_lut(class_ids)[index.cpu().numpy()]
