"""The one home of every default value: the published PSA settings (DESIGN.md §1).

Each stage's defaults are a frozen dataclass whose field names are the keys of
that stage's section in `workflow/schemas/config.schema.yaml`. Everything else
derives from here: the `psa` command-line defaults, the keyword defaults of the
library functions and the named constants of the pure modules
(`psa_core.cam.DEFAULT_SCALES`, `psa_core.transforms.CROP_SIZE`, …). The schema
repeats the values for Snakemake (it cannot import Python), and
`tests/test_defaults.py` checks that the two agree. `config.yaml` holds the
values of the CPU demo and notes the published ones beside them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticDefaults:
    """The built-in synthetic dataset (`psa_core.data.synthetic.generate`)."""

    seed: int = 0
    num_train: int = 160
    num_val: int = 48
    image_size: tuple[int, int] = (96, 160)
    num_classes: int = 4


SYNTHETIC = SyntheticDefaults()

JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")
"""Order of the four colour-jitter strengths in tuples and on the command line."""


@dataclass(frozen=True)
class TrainDefaults:
    """The optimiser and augmentation of one PSA training (DESIGN.md §1.1, §1.3)."""

    batch_size: int
    epochs: int
    lr: float
    crop_size: int
    resize_long: tuple[int, int] | None
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    # The reference's PolyOptimizer passes its weight decay into SGD's momentum
    # slot: an effective momentum of 5e-4, i.e. none (see training.build_optimizer).
    momentum: float = 0.0
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    num_workers: int = 0


CAM_TRAIN = TrainDefaults(batch_size=16, epochs=15, lr=0.1, crop_size=448, resize_long=(256, 512))
"""train_cam (DESIGN.md §1.1)."""

AFFINITY_TRAIN = TrainDefaults(batch_size=8, epochs=8, lr=0.1, crop_size=448, resize_long=None)
"""train_affinity (DESIGN.md §1.3); the reference's affinity training does no random resize."""


SEGMENTATION_TRAIN = TrainDefaults(
    batch_size=20, epochs=12, lr=0.001, crop_size=321, resize_long=(256, 512), momentum=0.9
)
"""train_seg (DESIGN.md §1.6): DeepLab-LargeFOV's solver (batch 20, lr 1e-3, momentum
0.9, 321-px crops; 12 epochs of VOC's train_aug ≈ its 6,000 iterations)."""

SEGMENTATION_DILATION = 12
"""Rate of the segmentation head's 3×3 conv (DeepLab-LargeFOV)."""


@dataclass(frozen=True)
class SegmentationInferDefaults:
    """Segmentation-network inference (DESIGN.md §1.6): softmax averaged over scales and flips."""

    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    flip: bool = True
    crf: bool = False  # dense-CRF post-processing with the `crf` section's kernels
    batch_size: int = 4  # images of one size per forward pass


SEGMENTATION_INFER = SegmentationInferDefaults()


@dataclass(frozen=True)
class CamInferDefaults:
    """Multi-scale CAM inference (DESIGN.md §1.1)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    dtype: str = "float16"


CAM_INFER = CamInferDefaults()


@dataclass(frozen=True)
class CamEvaluateDefaults:
    """CAM as a segmentation: the published background score and the sweep (§1.1, §1.5)."""

    bg_threshold: float = 0.2
    thresholds: tuple[float, ...] = (
        0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
    )  # fmt: skip


CAM_EVALUATE = CamEvaluateDefaults()


@dataclass(frozen=True)
class CrfDefaults:
    """Affinity labels from CAMs through the dense CRF (DESIGN.md §1.2)."""

    alpha_low: float = 4.0  # the seed note says 8; the published code uses 4
    alpha_high: float = 32.0
    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    dtype: str = "float16"
    workers: int = 1


CRF = CrfDefaults()


@dataclass(frozen=True)
class RandomWalkDefaults:
    """Propagation of the CAMs over AffinityNet's affinities (DESIGN.md §1.4)."""

    alpha: float = 16.0  # background (1 - max cam)^alpha of the walk's input
    beta: float = 8.0
    logt: int = 8  # 2^8 = 256 steps


RANDOM_WALK = RandomWalkDefaults()


@dataclass(frozen=True)
class RandomWalkEvaluateDefaults:
    """Background exponents the walk's evaluation sweeps over the stored affinities."""

    alphas: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 24.0, 32.0)


RANDOM_WALK_EVALUATE = RandomWalkEvaluateDefaults()


@dataclass(frozen=True)
class ReportDefaults:
    """What the Snakemake report shows."""

    gallery_size: int = 6  # examples per split in the gallery


REPORT = ReportDefaults()

AFFINITY_RADIUS = 5
"""Pairs closer than this many stride-8 cells get an affinity (34 offsets)."""
