"""Named constants shared by every stage (docs/design.md §1)."""

IGNORE_INDEX = 255
"""Label value for void / uncertain pixels (VOC masks, affinity labels)."""

BACKGROUND_INDEX = 0
"""Segmentation index of the background; class c (0-based) has index c + 1."""

CHANCE_SHARE = 0.9
"""A CAM classifier whose final loss is above this share of the constant guess's
(`psa_core.metrics.constant_guess_loss`) has learned next to nothing from the images
(the summary's `CAM classifier` row; the default of `cam.retry_above`). Set on val
losses (benchmarks/RESULTS.md, "a guard for a classifier at chance"); a train loss,
taken under augmentation, sits higher, so on it the summary hedges its verdict."""

FEATURE_STRIDE = 8
"""Output stride of every backbone: one feature cell per 8x8 pixels."""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map as a flat list of 768 ints (256 RGB triples).

    Index i gets the colour whose bits are spread over R, G and B three at a
    time, the devkit's `labelcolormap`; index 255 (void) is (224, 224, 192).
    """
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette
