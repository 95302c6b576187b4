"""Segmentation stage (docs/design.md §1.6): train a DeepLab-LargeFOV-style network on the
random-walk masks, segment the evaluation splits with it, score them, and segment
any images with a trained model folder (workflow/rules/segmentation.smk, `psa predict`).

`train_seg`, `package_seg_model`, `infer_seg`, `evaluate_seg` and `predict` are
the drivers of the `psa` subcommands of the same names; the library they call is
`psa_core.segmentation`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from psa_core import io
from psa_core.data import image_paths, read_labels, select_shard
from psa_core.errors import PsaError
from psa_core.settings import (
    DatasetSettings,
    Keys,
    ModelSettings,
    Overrides,
    Recorded,
    RunSettings,
    SegmentationInferSettings,
    SegmentationSettings,
    section_from,
)
from psa_core.stages.common import (
    ImageList,
    LabelledImages,
    Reports,
    Shard,
    TrainingFiles,
    loop_keywords,
    mask_files,
    model_to_train,
    timed,
)

log = logging.getLogger("psa")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Files `psa predict` takes from a folder."""


def train_seg(
    *,
    data: LabelledImages,
    masks: Path,
    files: TrainingFiles,
    model: ModelSettings,
    seg: SegmentationSettings,
    run: RunSettings,
) -> None:
    """`psa train-seg`: train the segmentation network on a split's masks (resumable);
    `psa package-seg-model` then makes the model folder that `psa predict` reads.

    Args:
        masks: folder of NAME.png training masks.
    """
    from psa_core.segmentation import fit_seg

    classes = data.classes()
    net = model_to_train("seg", len(classes), files, model, run, dilation=seg.dilation)
    images = data.image_files()
    fit_seg(net, images, list(images), masks, seg, **loop_keywords(files, run))


def package_seg_model(
    *,
    weights: Path,
    labels: Path,
    model: ModelSettings,
    seg: Annotated[SegmentationSettings, Keys("dilation")],
    infer: Annotated[SegmentationInferSettings, Keys("scales", "flip", "crf")],
    recorded: Annotated[Mapping[str, Any], Recorded()],
    dataset: Annotated[DatasetSettings, Keys("max_side")],
    out: Path,
) -> None:
    """`psa package-seg-model`: the model folder (`weights.pt` + `model.json`) of trained
    weights, with the inference defaults `infer`, the longest side it segments at
    (`dataset.max_side`) and every setting `recorded` (what made the model) written
    into model.json.

    A separate step from training, so that new inference defaults rewrite the
    description without retraining. The weights are checked to load first.

    Args:
        weights: weights from train-seg (.pt).
        labels: labels from `psa index` (the class names).
        out: the model folder to write.
    """
    from psa_core.models import create_model
    from psa_core.segmentation import WEIGHTS_FILE, write_model_description

    classes, _ = read_labels(labels)
    net = create_model(
        model.backbone,
        "seg",
        len(classes),
        checkpoint_path=weights,
        device="cpu",
        dilation=seg.dilation,
    )
    with io.atomic_dir(out) as folder:
        shutil.copyfile(weights, folder / WEIGHTS_FILE)
        write_model_description(
            folder,
            backbone=model.backbone,
            dilation=seg.dilation,
            classes=classes,
            normalization=net.normalization,
            infer=infer,
            settings={"pipeline": dict(recorded)},
            max_side=dataset.max_side,
        )
    log.info("model folder written to %s (%d classes + background)", out, len(classes))


# -- inference ----------------------------------------------------------------------


def infer_seg(
    *,
    data: ImageList,
    model: Path,
    shard: Shard,
    infer: SegmentationInferSettings,
    run: Annotated[RunSettings, Keys("device", "amp")],
    out_masks: Path,
    dataset: Annotated[Mapping[str, Any], Overrides("dataset"), Keys("max_side")],
) -> None:
    """`psa infer-seg`: masks of an image list (or one shard of it) from a segmentation
    model folder, at the images' original size.

    An image above `max_side` (given, else the model folder's) is segmented at
    its working size and its mask scaled back by nearest neighbour
    (docs/design.md §1.8).

    Args:
        model: the model folder package-seg-model wrote.
        out_masks: folder of mask PNGs to write.
    """
    from psa_core.segmentation import load_model_folder, segment_images

    names = select_shard(data.names(), shard.shard, shard.shard_size)
    paths = image_paths(data.image_files(), names)
    net, description = load_model_folder(model, run.device)
    max_side = _max_side(dataset, description)
    log.info(
        "scales %s, flip %s, CRF %s, max side %s",
        list(infer.scales), infer.flip, infer.crf, max_side,
    )  # fmt: skip
    with timed("segmentation", len(paths)), io.atomic_dir(out_masks) as folder:
        for path, _, mask in segment_images(net, paths, infer, max_side=max_side, amp=run.amp):
            io.write_mask(folder / f"{path.stem}.png", mask)


def _max_side(given: Mapping[str, Any], description: Mapping[str, Any]) -> int | None:
    """`--max-side` when given, else the model folder's (`recorded_max_side`)."""
    from psa_core.segmentation import recorded_max_side

    return given["max_side"] if "max_side" in given else recorded_max_side(description)


def evaluate_seg(*, data: LabelledImages, masks: Sequence[Path], reports: Reports) -> None:
    """`psa evaluate-seg`: mIoU of the segmentation network's masks of a split.

    Args:
        masks: the split's mask folders from infer-seg.
    """
    from psa_core.evaluate import MaskQuality, write_mask_report

    classes, truth = data.classes(), data.ground_truth()
    found = mask_files(masks, list(truth), "infer_seg")
    quality = MaskQuality(len(classes) + 1)
    for name, gt_file in truth.items():
        quality.add(io.read_mask(found[name]), io.read_mask(gt_file))
    result = {**quality.result(), **data.scored_counts(quality.num_images)}
    log.info("segmentation network mIoU: %s (%d images)", result["miou"], result["num_images"])
    write_mask_report(result, ["background", *classes], reports.out_json, reports.out_csv)


# -- psa predict --------------------------------------------------------------------


def list_images(source: Path) -> list[Path]:
    """The images `psa predict` segments: a folder's image files (sorted), the paths of a
    list file (one a line, relative to the list's folder), or one image file."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise PsaError(
                f"{source}: no images in this folder ({', '.join(IMAGE_SUFFIXES)}); "
                "point --images at a folder of images, a list file or one image"
            )
        return paths
    if not source.is_file():
        raise PsaError(f"{source}: not found; pass a folder of images, a list file or one image")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    lines = [line.strip() for line in io.read_text(source).splitlines()]  # BOM, UTF-8
    paths = [source.parent / line for line in lines if line and not line.startswith("#")]
    if not paths:
        raise PsaError(f"{source}: the image list is empty; put one image path a line")
    return paths


def check_predictions_spare_images(paths: Sequence[Path], out: Path, overlay: bool) -> None:
    """PsaError unless writing NAME.png (and NAME.jpg) into `out` leaves every input image
    alone: `out` must not be an input image, and no mask or overlay may land on one."""
    inputs = {p.resolve() for p in paths}
    folder = Path(out).resolve()
    if folder in inputs:
        raise PsaError(f"--out {out}: is an input image; give a folder for the masks")
    suffixes = (".png", ".jpg") if overlay else (".png",)
    for path in paths:
        for suffix in suffixes:
            target = folder / f"{path.stem}{suffix}"
            if target in inputs:
                raise PsaError(
                    f"--out {out}: writing {target.name} would overwrite the input image "
                    f"{path}; write the masks to another folder"
                )


def predict(
    *,
    model: Path,
    images: Path,
    out: Path,
    overlay: bool,
    infer: Annotated[Mapping[str, Any], Overrides("segmentation.infer")],
    run: Annotated[RunSettings, Keys("device", "amp")],
    dataset: Annotated[Mapping[str, Any], Overrides("dataset"), Keys("max_side")],
) -> None:
    """`psa predict`: a palette PNG mask (and with `--overlay` a JPEG overlay) per image.

    Needs no labels and no Snakemake: the model folder says everything.
    `infer` and `dataset` hold the settings given; the others are the model's
    recorded ones (scales, flip, CRF, max_side) or the defaults. Masks and
    overlays have the images' original size; an image above max_side is
    segmented at its working size and its mask scaled back by nearest
    neighbour (docs/design.md §1.8).

    Args:
        model: the model folder package-seg-model wrote.
        images: a folder of images, a list file or one image.
        out: the folder for NAME.png masks.
        overlay: also write NAME.jpg, the mask's colours over the image.
    """
    from psa_core.segmentation import load_model_folder, segment_images
    from psa_core.segmentation import overlay as overlay_mask

    paths = list_images(images)
    stems = [p.stem for p in paths]
    clash = next((s for s in stems if stems.count(s) > 1), None)
    if clash is not None:
        raise PsaError(
            f"two input images are named '{clash}' (different folders or suffixes); their masks "
            "would overwrite each other: rename one or segment them separately"
        )
    check_predictions_spare_images(paths, out, overlay)
    net, description = load_model_folder(model, run.device)
    settings = section_from("segmentation.infer", {**description["inference"], **infer})
    max_side = _max_side(dataset, description)
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "%d images, model %s (%s, %d classes), scales %s, flip %s, CRF %s, max side %s",
        len(paths),
        model,
        description["backbone"],
        len(description["classes"]),
        list(settings.scales),
        settings.flip,
        settings.crf,
        max_side,
    )
    segmented = segment_images(net, paths, settings, max_side=max_side, amp=run.amp, progress=True)
    for path, image, mask in segmented:
        io.write_mask(out / f"{path.stem}.png", mask)
        if overlay:
            if image.shape[:2] != mask.shape:  # scaled for the network: overlay the original
                image = io.read_image(path)
            io.write_image(out / f"{path.stem}.jpg", overlay_mask(image, mask))
            del image
    log.info("%d masks written to %s", len(paths), out)


predict.fills_folders = True  # its --out folder is written into, never replaced whole
