"""Random-walk stage (docs/design.md §1.4, §1.5): propagate each shard's CAMs over
AffinityNet's affinities, write the masks, score them with an alpha sweep,
export the training split's masks for a segmentation trainer, and summarise
every stage (workflow/rules/random_walk.smk).

Per shard the walk writes three artifacts:
- a scores shard: per image the propagated (C + 1, h, w) scores on the stride-8
  grid of the padded image (background first, `class_ids`);
- an affinity shard: per image the (n_offsets, n_from) pair affinities, so a
  sweep over the walk's background exponent needs no second pass through the
  network (the class rows of the walk do not depend on it);
- a folder of palette PNG masks, one per image.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np

from psa_core import io
from psa_core.constants import FEATURE_STRIDE
from psa_core.data import image_paths, read_labels
from psa_core.errors import PsaError
from psa_core.settings import (
    AffinitySettings,
    CamEvaluateSettings,
    Keys,
    ModelSettings,
    RandomWalkEvaluateSettings,
    RandomWalkSettings,
    RunSettings,
)
from psa_core.stages.common import (
    ImageList,
    LabelledImages,
    Reports,
    listed_shard_names,
    mask_files,
    shard_index,
    timed,
)

log = logging.getLogger("psa")


def random_walk_shard(
    *,
    data: LabelledImages,
    cams: Path,
    weights: Path,
    model: ModelSettings,
    affinity: Annotated[AffinitySettings, Keys("radius")],
    walk: RandomWalkSettings,
    run: Annotated[RunSettings, Keys("device", "amp")],
    out: Path,
    out_affinity: Path,
    out_masks: Path,
) -> None:
    """`psa random-walk`: propagate one CAM shard over AffinityNet's affinities into masks
    (the random walk of docs/design.md §1.4).

    Args:
        cams: the shard's CAMs (HDF5).
        weights: trained AffinityNet weights (.pt/.pth).
        out: HDF5 shard of walked scores to write.
        out_affinity: HDF5 shard of affinities to write.
        out_masks: folder of mask PNGs to write.
    """
    import torch

    from psa_core.affinity import check_grid_size
    from psa_core.device import autocast_dtype, resolve_device
    from psa_core.models import create_model
    from psa_core.random_walk import padded_size, random_walk, scores_to_mask, walk_input
    from psa_core.transforms import to_size_of

    classes = data.classes(cams)
    names = listed_shard_names(cams, data.images)
    paths = image_paths(data.image_files(), names)
    cam_data, _ = io.read_score_shard(cams)
    radius, alpha, beta, logt = affinity.radius, walk.alpha, walk.beta, walk.logt
    torch_device = resolve_device(run.device)
    net = create_model(
        model.backbone,
        "affinity",
        len(classes),
        checkpoint_path=weights,
        device=torch_device,
        radius=radius,
    )
    amp_dtype = autocast_dtype(run.amp)
    log.info("beta %g, logt %d, alpha %g", beta, logt, alpha)
    scores, affinities, masks = {}, {}, {}
    with timed("random walk", len(names)):
        for name, path in zip(names, paths, strict=True):
            full = io.read_image(path)
            maps, class_ids = cam_data[name]
            image = to_size_of(full, maps.shape[1:])  # the CAMs' working size (§1.8)
            if image is None:
                raise PsaError(
                    f"{cams}: CAMs of '{name}' are {maps.shape[2]}x{maps.shape[1]} but the image is "
                    f"{full.shape[1]}x{full.shape[0]}; delete the shard and rerun infer_cam"
                )
            del full
            height, width = image.shape[:2]
            pad_h, pad_w = padded_size(height, width)
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(torch_device)
            x = torch.nn.functional.pad(net.normalization(x), (0, pad_w - width, 0, pad_h - height))
            grid = (pad_h // FEATURE_STRIDE, pad_w // FEATURE_STRIDE)
            try:
                check_grid_size(*grid, radius)
            except PsaError:  # too small for a single pair: the walk is the identity
                aff = torch.zeros(net.head.num_offsets, 0, device=torch_device)
            else:
                with (
                    torch.inference_mode(),
                    torch.autocast(torch_device.type, amp_dtype, enabled=amp_dtype is not None),
                ):
                    aff = net(x)[0].float()
            start_scores = torch.from_numpy(walk_input(maps, alpha)).to(torch_device)
            walked = random_walk(aff, start_scores, beta=beta, logt=logt)
            scores[name] = (walked.cpu().numpy(), class_ids)
            affinities[name] = (aff.cpu().numpy(), class_ids)
            masks[name] = scores_to_mask(
                walked, (height, width), class_ids, image if walk.crf else None
            )
    attrs = {
        "stage": "random_walk",
        "classes": classes,
        "cams": str(cams),
        "weights": str(weights),
        "backbone": model.backbone,
        "radius": radius,
        "alpha": alpha,
        "beta": beta,
        "logt": logt,
        "crf": walk.crf,
    }
    with io.atomic_dir(out_masks) as folder:
        for name, mask in masks.items():
            io.write_mask(folder / f"{name}.png", mask)
    io.write_score_shard(out_affinity, affinities, attrs={**attrs, "what": "affinities"})
    io.write_score_shard(out, scores, attrs=attrs, dtype="float32")


# -- evaluation -------------------------------------------------------------------


def _iter_walks(
    masks: Mapping[str, Path],
    walk_shards: Sequence[Path],
    affinity_shards: Sequence[Path],
    cam_shards: Sequence[Path],
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image of `masks` (name -> its ground-truth mask): (name, walked scores,
    affinities, CAMs, class_ids, gt)."""
    names = list(masks)
    walks = shard_index(walk_shards, names, "random-walk")
    affs = shard_index(affinity_shards, names, "affinity")
    cams = shard_index(cam_shards, names, "CAM")
    for shard in dict.fromkeys(walks[n] for n in names):
        walked_data, _ = io.read_score_shard(shard)  # one shard in memory at a time
        in_shard = [n for n in names if walks[n] == shard]
        for name in in_shard:
            walked, class_ids = walked_data[name]
            aff, _ = io.read_score(affs[name], name)
            maps, _ = io.read_score(cams[name], name)
            yield name, walked, aff, maps, class_ids, io.read_mask(masks[name])


def evaluate_random_walk(
    *,
    data: LabelledImages,
    walks: Sequence[Path],
    affinities: Sequence[Path],
    cams: Sequence[Path],
    walk: RandomWalkSettings,
    evaluate: RandomWalkEvaluateSettings,
    run: Annotated[RunSettings, Keys("device")],
    reports: Reports,
    out_plot: Path,
) -> None:
    """`psa evaluate-random-walk`: mIoU of the walk's masks, with a sweep over its alpha.

    The configured alpha is scored from the stored masks' scores; for every
    alpha of the sweep only the background row walks again, over the stored
    affinities (the class rows do not depend on alpha), so no network runs:
    per image one walk of the other alphas' background rows together
    (`psa_core.random_walk.alpha_sweep_masks`), on the configured device. With
    `random_walk.crf` every alpha's mask is refined by the dense CRF as the
    stage's masks are, with the image at the CAMs' working size.

    Args:
        walks: the split's walked-score shards.
        affinities: the split's affinity shards.
        cams: the split's CAM shards.
        out_plot: the sweep's plot to write (.svg or .png).
    """
    from psa_core.device import resolve_device
    from psa_core.evaluate import SweepConfusion, write_sweep_report
    from psa_core.random_walk import alpha_sweep_masks
    from psa_core.transforms import to_size_of

    alpha, beta, logt = walk.alpha, walk.beta, walk.logt
    classes = data.classes(*walks)
    grid = sorted({float(a) for a in evaluate.alphas} | {float(alpha)})
    device = resolve_device(run.device)
    sweep = SweepConfusion(len(classes) + 1, grid)
    truth = data.ground_truth()
    image_files = data.image_files() if walk.crf else {}
    with timed("alpha sweep", len(truth)):
        for name, walked, aff, maps, class_ids, full_gt in _iter_walks(
            truth, walks, affinities, cams
        ):
            size = maps.shape[1:]  # the working size: ground truth scaled to it (§1.8)
            gt = to_size_of(full_gt, size, "nearest")
            if gt is None:
                raise PsaError(
                    f"CAMs of '{name}' are {size[1]}x{size[0]} but its mask is "
                    f"{full_gt.shape[1]}x{full_gt.shape[0]}; rerun the pipeline for this dataset"
                )
            image = None
            if walk.crf:
                (path,) = image_paths(image_files, [name])
                image = to_size_of(io.read_image(path), size)
                if image is None:
                    raise PsaError(
                        f"CAMs of '{name}' are {size[1]}x{size[0]} but its image {path} is not of "
                        "that aspect; rerun the pipeline for this dataset"
                    )
            masks = alpha_sweep_masks(
                aff, maps, walked, class_ids, grid,
                walked_alpha=alpha, beta=beta, logt=logt, device=device, image=image,
            )  # fmt: skip
            for index, mask in enumerate(masks):
                sweep.add(index, mask, gt)
    result = sweep.result("alpha", grid, published=float(alpha))
    result.update(data.scored_counts(result["num_images"]))
    log.info(
        "random walk mIoU: %s at alpha %g; best %s at alpha %s",
        result["published_miou"],
        alpha,
        result["best_miou"],
        result["best_value"],
    )
    write_sweep_report(result, ["background", *classes], reports.out_json, reports.out_csv)
    from psa_core.plots import sweep_plot  # matplotlib: imported by the jobs that draw only

    xs = [row["alpha"] for row in result["sweep"]]
    ys = [row["miou"] for row in result["sweep"]]
    sweep_plot(
        xs,
        ys,
        out_plot,
        xlabel="background exponent alpha of the walk's input",
        title=f"Random walk: mIoU against alpha ({result['num_images']} images)",
        mark={"configured": float(alpha), "best": result["best_value"]},
    )


# -- without ground truth: what the walk did to the CAMs ------------------------------

REWRITTEN = 0.5
"""An image whose walk kept less than this share of its CAM foreground counts as rewritten."""


def walk_changes(
    *,
    data: ImageList,
    cams: Sequence[Path],
    masks: Sequence[Path],
    evaluate: Annotated[CamEvaluateSettings, Keys("bg_threshold")],
    out: Path,
) -> None:
    """`psa walk-changes`: for a split without ground truth, the share of each image's CAM
    foreground (at the reported background threshold) that the random walk kept, gave
    another class or made background, so that a person can see when the walk rewrote
    the CAMs wholesale.

    Args:
        cams: the split's CAM shards.
        masks: the split's random-walk mask folders.
        out: the report to write (.json): per image the pixel counts of
            `psa_core.metrics.walk_changes`; over the split the mean shares and the
            images that kept less than half (`rewritten`).
    """
    from psa_core.metrics import WALK_CHANGES
    from psa_core.metrics import walk_changes as count_changes

    names = data.names()
    cam_where = shard_index(cams, names, "CAM")
    walk_files = mask_files(masks, names, "random_walk")
    threshold = evaluate.bg_threshold
    images: dict[str, dict[str, int]] = {}
    for shard in dict.fromkeys(cam_where[n] for n in names):
        maps, _ = io.read_score_shard(shard)  # one shard in memory at a time
        for name in (n for n in names if cam_where[n] == shard):
            cam_maps, class_ids = maps[name]
            walk = io.read_mask(walk_files[name])
            images[name] = count_changes(cam_maps, class_ids, walk, threshold)
    with_foreground = {n: c for n, c in images.items() if c["cam_foreground"]}
    shares = {
        what: (
            float(np.mean([c[what] / c["cam_foreground"] for c in with_foreground.values()]))
            if with_foreground
            else None
        )
        for what in WALK_CHANGES
    }
    rewritten = [
        n for n, c in with_foreground.items() if c["kept"] / c["cam_foreground"] < REWRITTEN
    ]
    io.write_json(
        out,
        {
            "bg_threshold": threshold,
            "num_images": len(images),
            "with_cam_foreground": len(with_foreground),
            **shares,
            "rewritten_below": REWRITTEN,
            "rewritten": rewritten,
            "images": images,
        },
    )
    log.info(
        "the walk kept %s of the CAM foreground; %d of %d images rewritten",
        shares["kept"], len(rewritten), len(with_foreground),
    )  # fmt: skip


# -- export and summary -------------------------------------------------------------


def link_images(data: ImageList, names: Sequence[str], link: Path) -> None:
    """`link` shows the images of `names`: a link to the dataset's JPEGImages folder when
    they all are there (the VOC layout), else a folder of links, one per image, named
    NAME plus the image's own suffix."""
    images = data.image_files()
    voc_folder = Path(data.root).resolve() / "JPEGImages"
    if all(images[n].resolve().parent == voc_folder for n in names):
        link.symlink_to(voc_folder)
        return
    link.mkdir()
    for name in names:
        (link / f"{name}{images[name].suffix}").symlink_to(images[name].resolve())


def export_masks(*, data: ImageList, split: str, masks: Sequence[Path], out: Path) -> None:
    """`psa export-masks`: the split's masks as a VOC-style folder a segmentation trainer reads.

    `out/SegmentationClassAug/<name>.png` (palette PNGs, VOC colours, 255
    nowhere: every pixel gets a class), `out/ImageSets/Segmentation/<split>.txt`
    (the image names) and `out/JPEGImages` (links to the dataset's images, `link_images`).

    Args:
        split: the name of the list file to write.
        masks: the split's random-walk mask folders.
        out: the folder to create.
    """
    names = data.names()
    found = mask_files(masks, names, "random_walk")
    with io.atomic_dir(out) as folder:
        masks_dir = folder / "SegmentationClassAug"
        masks_dir.mkdir()
        for name in names:
            try:  # a hard link costs no space; copy across file systems
                os.link(found[name], masks_dir / f"{name}.png")
            except OSError:
                shutil.copyfile(found[name], masks_dir / f"{name}.png")
        lists = folder / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True)
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        link_images(data, names, folder / "JPEGImages")
    log.info("%d masks exported to %s", len(names), out / "SegmentationClassAug")


def summarize(
    *,
    splits: Sequence[str] | None = None,
    no_ground_truth: Sequence[str] | None = None,
    cam: Sequence[Path] | None = None,
    crf: Sequence[Path] | None = None,
    walk: Sequence[Path] | None = None,
    seg: Sequence[Path] | None = None,
    changes: Sequence[Path] | None = None,
    cam_log: Path | None = None,
    train_split: str | None = None,
    train_labels: Path | None = None,
    val_labels: Path | None = None,
    reports: Reports,
) -> None:
    """`psa summarize`: one table of CAM → CRF labels → random walk (→ segmentation
    network, with `seg`) mIoU per split, and a "no ground truth" row for each split
    without masks; first, with `cam_log`, a row of the CAM classifier's final loss
    against a constant guess of the class frequencies (which says so when the
    classifier learned next to nothing).

    Args:
        splits: the scored splits (those with ground-truth masks).
        no_ground_truth: the evaluated splits that have no ground-truth mask.
        cam: their CAM evaluations (.json), one per scored split.
        crf: their CRF-label evaluations (.json).
        walk: their random-walk evaluations (.json).
        seg: their segmentation-network evaluations (.json).
        changes: the `psa walk-changes` reports of the splits without ground truth, one
            per split of `no_ground_truth`.
        cam_log: the CAM classifier's training log (`psa train-cam --out-log`).
        train_split: the name of its training split (the row's split), with `cam_log`.
        train_labels: its training split's labels (`psa index --out-labels`), with
            `cam_log`.
        val_labels: its validation split's labels, when it validated.
    """
    from psa_core.evaluate import classifier_check, summary_rows, write_summary

    splits, cam, crf, walk = splits or [], cam or [], crf or [], walk or []
    if not len(splits) == len(cam) == len(crf) == len(walk) == len(seg or splits):
        raise PsaError(
            "summarize: give one CAM, CRF, random-walk (and segmentation) result per split"
        )
    results = {
        split: {"cam": io.read_json(a), "crf": io.read_json(b), "walk": io.read_json(c)}
        for split, a, b, c in zip(splits, cam, crf, walk, strict=True)
    }
    for split, path in zip(splits, seg or [], strict=False):
        results[split]["seg"] = io.read_json(path)
    unscored = list(no_ground_truth or [])
    if changes and len(changes) != len(unscored):
        raise PsaError("summarize: give one walk-changes report per split without ground truth")
    reported = {
        split: io.read_json(path) for split, path in zip(unscored, changes or [], strict=False)
    }
    classifier = None
    if cam_log is not None:
        if train_labels is None or train_split is None:
            raise PsaError("summarize: --cam-log needs --train-split and --train-labels")
        val = _label_matrix(val_labels) if val_labels else None
        classifier, _ = classifier_check(train_split, cam_log, _label_matrix(train_labels), val)
    elif train_labels or val_labels or train_split:
        raise PsaError(
            "summarize: --train-split, --train-labels and --val-labels go with --cam-log"
        )
    rows = summary_rows(results, unscored, reported, classifier)
    write_summary(rows, reports.out_json, reports.out_csv)


def _label_matrix(path: Path) -> np.ndarray:
    """A labels file's (images, classes) matrix of 0/1."""
    _, labels = read_labels(path)
    if not labels:
        raise PsaError(f"{path}: the labels file lists no image; rerun `psa index`")
    return np.stack(list(labels.values()))
