"""Affinity stage (docs/design.md §1.2, §1.3): dense-CRF affinity labels per CAM shard,
their evaluation, and AffinityNet training (workflow/rules/affinity.smk).

CRF shards hold, per image, one (2, C + 1, H, W) dataset: the low-alpha ("la")
and high-alpha ("ha") CRF marginals, background first, then the present
classes in `class_ids` order. `crf_labels`, `evaluate_crf_labels` and
`train_affinity` are the drivers of the `psa` subcommands of the same names;
the library they call is `psa_core.affinity`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from psa_core import io
from psa_core.data import image_paths
from psa_core.errors import PsaError
from psa_core.settings import (
    AffinitySettings,
    CrfSettings,
    ModelSettings,
    RunSettings,
    as_dict,
)
from psa_core.stages.common import (
    LabelledImages,
    Reports,
    TrainingFiles,
    listed_shard_names,
    loop_keywords,
    model_to_train,
    shard_index,
    timed,
)

log = logging.getLogger("psa")

# -- crf_labels -----------------------------------------------------------------


def crf_labels(
    *,
    data: LabelledImages,
    cams: Path,
    crf: CrfSettings,
    out: Path,
    out_maps: Path,
) -> None:
    """`psa crf-labels`: CRF score stacks of one CAM shard, and its three-way label maps.

    Writes `out` (HDF5: per image the (2, C + 1, h, w) la / ha marginals,
    `class_ids`, provenance) and `out_maps/NAME.png` (VOC palette: class
    index, 0 background, 255 uncertain; docs/design.md §1.2), each atomically.
    (h, w) is the CAMs' size: an image above `dataset.max_side` is scaled to
    it (docs/design.md §1.8).

    Args:
        cams: the shard's CAMs (HDF5).
        out: HDF5 shard of score stacks to write.
        out_maps: folder of label-map PNGs to write.
    """
    from psa_core.affinity import HIGH, LOW, crf_label_map, crf_stacks_job, image_at_size_of

    classes = data.classes(cams)
    names = listed_shard_names(cams, data.images)
    shapes = io.read_score_shapes(cams)
    images = [  # at the CAMs' size; a corrupt image is reported before any CRF runs
        image_at_size_of(cams, name, shapes[name], io.read_image(path), "CAMs")
        for name, path in zip(names, image_paths(data.image_files(), names), strict=True)
    ]
    class_ids: dict[str, Any] = {}

    def jobs() -> Iterator[tuple[Any, ...]]:  # one image's CAMs read at a time
        for name, image in zip(names, images, strict=True):
            maps, class_ids[name] = io.read_score(cams, name)
            yield image, maps, crf

    log.info("shard %s: %d images, %d worker(s)", cams.name, len(names), crf.workers)
    with timed("CRF", len(names)), io.atomic_dir(out_maps) as folder:

        def stacks() -> Iterator[tuple[str, tuple[Any, Any]]]:
            """Each image's stacks, its label map written, in the storage type: one shard
            never holds every image's float32 stacks at once."""
            results = _map(crf_stacks_job, jobs(), crf.workers, len(names))
            for name, stack in zip(names, results, strict=True):
                label = crf_label_map(stack[LOW], stack[HIGH], class_ids[name])
                io.write_mask(folder / f"{name}.png", label)
                yield name, (stack.astype(crf.dtype), class_ids[name])

        io.write_score_shard(
            out,
            stacks(),
            attrs={
                "stage": "crf_labels",
                "classes": classes,
                "cams": str(cams),
                **{k: v for k, v in as_dict(crf).items() if k not in ("dtype", "workers")},
            },
            dtype=crf.dtype,
        )


def _map(
    func: Callable[[Any], Any], jobs: Iterable[Any], workers: int, count: int
) -> Iterator[Any]:
    """`map` over `count` jobs, in order, in `workers` processes (in this one for 1), with
    at most two jobs a worker taken from `jobs` ahead of the results."""
    if workers == 1 or count <= 1:
        yield from map(func, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(workers, count)) as pool:
        pending: collections.deque[Any] = collections.deque()
        for job in jobs:
            pending.append(pool.submit(func, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# -- evaluate_crf_labels ----------------------------------------------------------


def evaluate_crf_labels(*, data: LabelledImages, crf: Sequence[Path], reports: Reports) -> None:
    """`psa evaluate-crf-labels`: how good the supervision of AffinityNet is, against GT.

    Precision and recall of the confident foreground and background, the
    share left uncertain, and mIoU over the labelled pixels
    (`psa_core.evaluate.CrfLabelQuality`), at the labels' size: the ground
    truth of an image above `dataset.max_side` is scaled to its working size
    by nearest neighbour (docs/design.md §1.8).

    Args:
        crf: the split's CRF shards (HDF5).
    """
    from psa_core.affinity import HIGH, LOW, crf_label_map
    from psa_core.evaluate import CrfLabelQuality, write_crf_label_report
    from psa_core.transforms import to_size_of

    classes, masks = data.classes(*crf), data.ground_truth()
    names = list(masks)
    where = shard_index(crf, names, "CRF")
    quality = CrfLabelQuality(len(classes) + 1)
    wanted = set(names)
    for shard in dict.fromkeys(where[n] for n in names):
        stacks, _ = io.read_score_shard(shard)  # one shard in memory at a time
        for name, (stack, class_ids) in stacks.items():
            if name not in wanted:
                continue
            wanted.discard(name)
            mask_file = masks[name]
            full_gt = io.read_mask(mask_file)
            gt = to_size_of(full_gt, stack.shape[-2:], "nearest")
            if gt is None:
                raise PsaError(
                    f"{shard}: CRF scores of '{name}' are {stack.shape[-1]}x{stack.shape[-2]} but "
                    f"its mask {mask_file} is {full_gt.shape[1]}x{full_gt.shape[0]}; rerun "
                    "crf_labels for this dataset"
                )
            quality.add(crf_label_map(stack[LOW], stack[HIGH], class_ids), gt)
    result = {**quality.result(), **data.scored_counts(quality.num_images)}
    log.info(
        "CRF labels: fg precision %s recall %s, bg precision %s recall %s, uncertain %s, "
        "mIoU (labelled) %s",
        *(result[k] for k in ("fg_precision", "fg_recall", "bg_precision", "bg_recall")),
        result["uncertain_fraction"],
        result["miou"],
    )
    write_crf_label_report(result, ["background", *classes], reports.out_json, reports.out_csv)


# -- AffinityNet training ------------------------------------------------------------


def train_affinity(
    *,
    data: LabelledImages,
    crf: Sequence[Path],
    files: TrainingFiles,
    model: ModelSettings,
    affinity: AffinitySettings,
    run: RunSettings,
) -> None:
    """`psa train-affinity`: train AffinityNet on the CRF labels of a split (resumable).

    Args:
        crf: the split's CRF shards (HDF5).
    """
    from psa_core.affinity import fit_affinity

    names = data.names()
    classes = data.classes(*crf)
    net = model_to_train("affinity", len(classes), files, model, run, radius=affinity.radius)
    shards = shard_index(crf, names, "CRF")
    fit_affinity(net, data.image_files(), names, shards, affinity, **loop_keywords(files, run))
