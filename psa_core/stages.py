"""Stage drivers: read a stage's input artifacts, call the pure functions,
write its output artifacts. The CLI calls these; the Snakemake rules call the CLI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from psa_core import io
from psa_core.errors import PsaError

log = logging.getLogger("psa")


def load_cam_model(weights: Path, backbone: str, num_classes: int, device: str):
    """Build a CAM model, load trained weights strictly, move it to `device`, eval mode."""
    from psa_core.device import resolve_device
    from psa_core.models import build_model
    from psa_core.models.weights import load_weights

    model = build_model(backbone, "cam", num_classes=num_classes)
    load_weights(model, weights)
    return model.to(resolve_device(device)).eval()


def infer_cam_shard(
    *,
    root: Path,
    images_list: Path,
    labels_path: Path,
    weights: Path,
    backbone: str,
    shard: int,
    shard_size: int,
    scales: Sequence[float],
    dtype: str,
    device: str,
    out: Path,
    amp: str = "none",
) -> None:
    """Multi-scale CAMs (DESIGN.md §1.1) of one shard of a split into one HDF5 file.

    Each image's dataset holds the maps of its present classes only,
    (C, H, W) in [0, 1], with their 0-based ids in the `class_ids` attribute.
    """
    from psa_core.cam import multiscale_cam
    from psa_core.data import image_path, read_labels, shard_slice
    from psa_core.device import autocast_dtype

    classes, labels = read_labels(labels_path)
    names = shard_slice(io.read_lines(images_list), shard_size, shard)
    model = load_cam_model(weights, backbone, len(classes), device)
    log.info("shard %d: %d images, scales %s, device %s", shard, len(names), list(scales), device)
    scores = {}
    start = time.perf_counter()
    for name in names:
        if name not in labels:
            raise PsaError(f"{labels_path}: no labels for image '{name}'; rerun `psa index`")
        label = labels[name]
        image = io.read_image(image_path(root, name))
        cams = multiscale_cam(model, image, label, scales=scales, amp_dtype=autocast_dtype(amp))
        present = np.flatnonzero(label > 0)
        scores[name] = (cams[present], present)
    elapsed = time.perf_counter() - start
    log.info(
        "%d images in %.1f s (%.2f images/s)", len(names), elapsed, len(names) / max(elapsed, 1e-9)
    )
    io.write_score_shard(
        out,
        scores,
        attrs={
            "stage": "cam",
            "classes": classes,
            "backbone": backbone,
            "weights": str(weights),
            "scales": list(scales),
            "amp": amp,
            "shard": shard,
            "shard_size": shard_size,
        },
        dtype=dtype,
    )


def iter_cam_items(
    root: Path, names: Sequence[str], shards: Sequence[Path]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (cams (C, H, W), class_ids (C,), gt (H, W) uint8) for every listed image.

    One shard is in memory at a time (a VOC split's CAMs would not fit at once).
    """
    from psa_core.data import gt_mask_path

    stored = {name for shard in shards for name in io.read_score_shard_names(shard)}
    missing = [n for n in names if n not in stored]
    if missing:
        raise PsaError(
            f"CAM shards lack {len(missing)} listed images (first: '{missing[0]}'); "
            "delete the shards and rerun inference"
        )
    wanted = set(names)
    for shard in shards:
        data, _ = io.read_score_shard(shard)
        for name, (cams, class_ids) in data.items():
            if name not in wanted:
                continue
            wanted.discard(name)  # an image stored twice counts once
            mask_file = gt_mask_path(root, name)
            if mask_file is None:
                raise PsaError(
                    f"{root}: no ground-truth mask for '{name}'; evaluate a split that has masks"
                )
            gt = io.read_mask(mask_file)
            if gt.shape != cams.shape[1:]:
                raise PsaError(
                    f"{mask_file}: mask is {gt.shape[1]}x{gt.shape[0]} but its CAM is "
                    f"{cams.shape[2]}x{cams.shape[1]}; rerun inference for this dataset"
                )
            yield cams, class_ids, gt


def evaluate_cam_shards(
    *,
    root: Path,
    images_list: Path,
    labels_path: Path,
    shards: Sequence[Path],
    thresholds: Sequence[float],
    bg_threshold: float,
    out_json: Path,
    out_csv: Path,
    out_svg: Path,
) -> None:
    """CAM mIoU over a background-threshold sweep (DESIGN.md §1.5), as JSON, CSV and SVG."""
    from psa_core.data import read_labels
    from psa_core.evaluate import evaluate_cams, write_cam_report

    classes, _ = read_labels(labels_path)
    names = io.read_lines(images_list)
    result = evaluate_cams(
        iter_cam_items(root, names, shards),
        num_classes=len(classes) + 1,
        thresholds=thresholds,
        published_threshold=bg_threshold,
    )
    log.info("CAM mIoU: %s", {k: v for k, v in result.items() if "miou" in k})
    write_cam_report(result, ["background", *classes], out_json, out_csv, out_svg)
