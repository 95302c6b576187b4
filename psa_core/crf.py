"""Dense CRF on CAM score stacks: the affinity-label scores of docs/design.md §1.2.

The background score `(1 - max_c cam_c) ** alpha` is stacked in front of the
present classes' CAMs and refined by a fully connected CRF (pydensecrf,
Krähenbühl & Koltun 2011) with the published PSA kernels. A low alpha gives a
generous background ("la"), a high one a tight background ("ha").
"""

from __future__ import annotations

import numpy as np

from psa_core.errors import PsaError
from psa_core.settings import CrfSettings

CRF_ITERATIONS = CrfSettings.iterations
"""Mean-field iterations of the dense CRF (published PSA value)."""

GAUSSIAN_SXY = CrfSettings.gaussian_sxy
"""Spatial standard deviation (pixels) of the smoothness (Gaussian) kernel."""

GAUSSIAN_COMPAT = CrfSettings.gaussian_compat
"""Potts weight of the smoothness kernel."""

BILATERAL_SXY = CrfSettings.bilateral_sxy
"""Spatial standard deviation (pixels) of the appearance (bilateral) kernel."""

BILATERAL_SRGB = CrfSettings.bilateral_srgb
"""Colour standard deviation (0..255 RGB units) of the appearance kernel."""

BILATERAL_COMPAT = CrfSettings.bilateral_compat
"""Potts weight of the appearance kernel."""

UNARY_CLIP = 1e-5
"""Scores are clipped to [UNARY_CLIP, 1] before `-log`, as pydensecrf's `unary_from_softmax`."""

ALPHA_LOW = CrfSettings.alpha_low
"""Background exponent of the "la" stack (generous background; the seed note says 8)."""

ALPHA_HIGH = CrfSettings.alpha_high
"""Background exponent of the "ha" stack (tight background)."""

_RGB_CHANNELS = 3


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise PsaError(
            f"CRF image has dtype {image.dtype}; pass the (H, W, 3) uint8 RGB image as read from disk"
        )
    if image.ndim != 3 or image.shape[2] != _RGB_CHANNELS:
        raise PsaError(
            f"CRF image has shape {image.shape}; expected (H, W, 3) RGB, convert it with "
            "psa_core.io.read_image"
        )
    return image


def crf_inference(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = CRF_ITERATIONS,
    *,
    gaussian_sxy: float = GAUSSIAN_SXY,
    gaussian_compat: float = GAUSSIAN_COMPAT,
    bilateral_sxy: float = BILATERAL_SXY,
    bilateral_srgb: float = BILATERAL_SRGB,
    bilateral_compat: float = BILATERAL_COMPAT,
) -> np.ndarray:
    """Dense-CRF marginals of a score stack (docs/design.md §1.2, PSA's `crf_inference`).

    The unary is `-log(clip(probs, 1e-5, 1))`, exactly pydensecrf's
    `unary_from_softmax`; like the published code the stack is not
    renormalised per pixel. A per-pixel normalisation would only shift each
    pixel's unaries by a constant, which mean-field inference ignores (up to
    the clip at 1e-5 and 1).

    Args:
        image: (H, W, 3) uint8 RGB; the bilateral kernel's colours.
        probs: (C, H, W) float, finite and non-negative; per-label scores.
        iterations: mean-field iterations, >= 1.
        gaussian_sxy, gaussian_compat: smoothness kernel (pixels, Potts weight).
        bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel
            (pixels, RGB units, Potts weight).

    Returns:
        (C, H, W) float32 marginals; each pixel's C values sum to 1.
    """
    import pydensecrf.densecrf as dcrf

    image = _check_image(image)
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise PsaError(f"CRF scores have shape {probs.shape}; expected (C, H, W)")
    if probs.dtype.kind not in "biuf":
        raise PsaError(f"CRF scores have dtype {probs.dtype}; pass real-valued (C, H, W) scores")
    num_labels, height, width = probs.shape
    if (height, width) != image.shape[:2]:
        raise PsaError(
            f"CRF scores are {height}x{width} but the image is "
            f"{image.shape[0]}x{image.shape[1]} (HxW); resize the scores to the image size"
        )
    if num_labels < 1:
        raise PsaError("CRF scores have no labels (C = 0); stack at least the background score")
    if int(iterations) != iterations or iterations < 1:
        raise PsaError(f"CRF iterations is {iterations}; use a positive integer (published: 10)")
    if not np.isfinite(probs).all():
        raise PsaError("CRF scores contain NaN or infinity; check the CAMs they were made from")
    if (probs < 0).any():
        raise PsaError("CRF scores contain negative values; pass non-negative scores (CAMs >= 0)")
    if probs.dtype.kind != "f":
        probs = probs.astype(np.float32)

    unary = -np.log(np.clip(probs, UNARY_CLIP, 1.0))
    unary = np.ascontiguousarray(unary.reshape(num_labels, -1), dtype=np.float32)

    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy,
        srgb=bilateral_srgb,
        rgbim=np.ascontiguousarray(image).copy(),
        compat=bilateral_compat,
    )
    marginals = crf.inference(int(iterations))
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)


def background_score(cams: np.ndarray, alpha: float) -> np.ndarray:
    """Background score `(1 - max_c cam_c) ** alpha` (docs/design.md §1.2).

    Args:
        cams: (C, H, W) float in [0, 1], the present classes' CAMs; C may be 0.
        alpha: exponent >= 0; larger means less background.

    Returns:
        (1, H, W) float32; all ones when C == 0 (no present class).
    """
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise PsaError(f"CAMs have shape {cams.shape}; expected (C, H, W) of the present classes")
    if not np.isfinite(alpha) or alpha < 0:
        raise PsaError(f"background alpha is {alpha}; use a non-negative number (published: 4, 32)")
    _, height, width = cams.shape
    if cams.shape[0] == 0:
        return np.ones((1, height, width), dtype=np.float32)
    if not np.isfinite(cams).all() or cams.min() < 0 or cams.max() > 1:
        raise PsaError(
            "CAMs must be finite and in [0, 1]; normalise each class map by its max "
            "(psa_core.cam.multiscale_cam does)"
        )
    foreground = cams.max(axis=0, keepdims=True).astype(np.float32)
    return np.power(1.0 - foreground, np.float32(alpha)).astype(np.float32)


def score_stack(cams: np.ndarray, alpha: float) -> np.ndarray:
    """The background score stacked in front of the CAMs.

    Args:
        cams: (C, H, W) float in [0, 1], the present classes' CAMs; C may be 0.
        alpha: background exponent, see `background_score`.

    Returns:
        (C + 1, H, W) float32; index 0 is background, index c + 1 is cams[c].
    """
    background = background_score(cams, alpha)
    return np.concatenate([background, np.asarray(cams, dtype=np.float32)], axis=0)


def crf_score_stacks(
    image: np.ndarray,
    cams: np.ndarray,
    alpha_low: float = ALPHA_LOW,
    alpha_high: float = ALPHA_HIGH,
    **crf: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The "la" and "ha" CRF score stacks of one image (docs/design.md §1.2).

    Args:
        image: (H, W, 3) uint8 RGB.
        cams: (C, H, W) float in [0, 1], the present classes' CAMs; C may be 0.
        alpha_low: background exponent of "la" (generous background).
        alpha_high: background exponent of "ha" (tight background), >= alpha_low.
        **crf: keywords of `crf_inference` (iterations, gaussian_sxy, ...).

    Returns:
        (la, ha), each (C + 1, H, W) float32 CRF marginals, background first.
    """
    if alpha_low > alpha_high:
        raise PsaError(
            f"alpha_low ({alpha_low}) is larger than alpha_high ({alpha_high}); swap them "
            "(published: 4 and 32)"
        )
    la = crf_inference(image, score_stack(cams, alpha_low), **crf)
    ha = crf_inference(image, score_stack(cams, alpha_high), **crf)
    return la, ha
