"""Benchmark: a measured cost model of the pipeline, and its VOC and COCO projections
(issue 18, item 5).

Three parts, each printed as markdown for benchmarks/RESULTS.md:

1. **per-image** — the cost of one VOC-sized image (500×375) in every stage, on
   this machine, for each backbone of `--backbones` (random weights: the cost
   does not depend on the values). `tiny` runs at the committed `config.yaml`
   (crops, batch sizes, head dilation); `resnet38d` at the published settings
   (the `psa_core.settings` defaults: crops 448 / 448 / 321, dilation 12) with
   a batch of 2. Training stages time SGD steps (forward, backward, update) on
   a fixed batch, without the data loader; inference stages call the library
   function the stage's driver calls. A warm-up call comes first (the inference
   stages warm up on a half-size image). Figures are CPU seconds of the process
   with one torch thread (`--threads 1`): core-seconds, which other processes on
   a shared machine inflate far less than wall time; two threads on a loaded
   2-core machine stall at every OpenMP barrier (a `tiny` CAM step ran 35×
   slower).
2. **growth** — the real workflow (`snakemake --cores 2` on the synthetic
   dataset, in a temporary folder) at three training-set sizes, the three
   trainers at 1 epoch, `shard_size` 32, everything else as in `config.yaml`;
   every job at most `--job-threads` threads (default 1, for the same reason).
   Reads every job's Snakemake benchmark TSV and reports per rule the seconds
   per image at each size, the marginal seconds per image between sizes and a
   least-squares fit (fixed s + s/image) of the wall time, and the largest
   `max_rss`.
3. **projection** — the wall time of PASCAL VOC (train_aug + train + val) and
   COCO 2014 with resnet38d on one 8-GPU node and on a SLURM cluster of N such
   nodes: once from part 1's CPU figures (a CPU projection) and once from the
   H200 figures already in benchmarks/RESULTS.md (`H200` below, each with its
   source). The images each stage handles come from Snakemake's own plan of
   the full-size datasets (list-only folders, as bench_dag_scale.py and
   bench_coco_plan.py build them). With part 2, also the one-job-per-split CPU
   rules (evaluations, mask export) at full size, from the growth fit.

    python benchmarks/cost_model.py                   # all parts, about 26 min on 2 cores
    python benchmarks/cost_model.py --quick --backbones tiny   # a smoke run, about 4 min
    python benchmarks/cost_model.py --parts per-image --backbones tiny
    python benchmarks/cost_model.py --parts growth --sizes 100 400 1600 --num-val 32
    python benchmarks/cost_model.py --parts --load costs.json   # projections from a saved run

`--code HEAD` (the default) measures a `git archive` of the commit, so that work
in progress in the checkout neither changes nor breaks a half-hour run; `--code
checkout` measures the checkout as it is. `--save FILE` keeps every figure as JSON.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

FROZEN_ENV = "PSA_COST_MODEL_CODE"
"""Set in the re-executed run inside a `git archive`: which code it measures."""

VOC_IMAGE_HW = (375, 500)
"""A typical PASCAL VOC image (height, width)."""

COCO_IMAGE_HW = (480, 640)
"""A typical COCO 2014 image (height, width)."""

H200_IMAGE_HW = (448, 448)
"""The image size of the H200 pipeline runs in benchmarks/RESULTS.md."""

NUM_CLASSES = 20
"""VOC's classes: the width of the CAM and segmentation heads."""

PRESENT_CLASSES = 3
"""Classes present in the measured image (CAM inference, CRF, random walk)."""

RESNET_BATCH = 2
"""Images per measured training step of resnet38d on the CPU."""

SECTIONS = ("cam", "affinity", "segmentation")
"""The three trainers' config sections."""

# -- the H200 figures of benchmarks/RESULTS.md (resnet38d, 448×448) -------------------

GPU_RUN = "RESULTS.md, 'GPU run: full pipeline on an H200 with resnet38d at 448×448'"
GPU_SEG_RUN = "RESULTS.md, 'GPU run with the segmentation network (issue 10)'"
H200: dict[str, dict[str, Any]] = {
    "train_cam": {
        "img_s": 137.1,
        "what": "bf16, interior windows, 4 loader workers, crop 448",
        "source": f"{GPU_RUN}, training img/s table",
    },
    "train_affinity": {
        "img_s": 61.7,
        "what": "bf16, interior windows, 4 loader workers (loader-bound; network alone 150.4)",
        "source": f"{GPU_RUN}, training img/s table",
    },
    "train_seg": {
        "img_s": 90.6,
        "what": "bf16, interior windows, 4 loader workers, crop 448 (published 321: an upper bound)",
        "source": f"{GPU_SEG_RUN}, train_seg img/s table",
    },
    "infer_cam": {
        "img_s": (8.6 + 10.3) / 2,
        "what": "in-job loop, 4 scales × flip, amp none (TF32), 448×448 images",
        "source": f"{GPU_RUN}, per-stage table (8.6–10.3 img/s)",
    },
    "crf_labels": {
        "core_s": 8 / ((6.9 + 7.4) / 2),
        "what": "core-seconds an image: 8 workers gave 6.9–7.4 img/s, 448×448 images",
        "source": f"{GPU_RUN}, per-stage table",
    },
    "random_walk": {
        "img_s": (18 + 23) / 2,
        "what": "in-job loop (AffinityNet forward + walk on the GPU), 448×448 images",
        "source": f"{GPU_RUN}, per-stage table (18–23 img/s)",
    },
    "infer_seg": {
        "img_s": (10.0 + 12.1) / 2,
        "what": "in-job loop, 5 scales × flip, 448×448 images",
        "source": f"{GPU_SEG_RUN}, segmentation stage table (10.0–12.1 img/s)",
    },
    "evaluate_random_walk": {
        "img_s": 128 / 55.8,
        "what": "CPU job, 2 threads, 6 alphas, 448×448 images (55.8 s for 128 images)",
        "source": f"{GPU_RUN}, per-stage table",
    },
    "job_start": {
        "s": 7.0,
        "what": "imports, CUDA context and model load before a GPU job's loop starts",
        "source": f"{GPU_RUN}, 'Start-up dominates the GPU jobs'",
    },
}

GPU_SHARD_RULES = ("infer_cam", "random_walk", "infer_seg")
"""Per-shard jobs that hold a GPU."""

TRAIN_RULES = ("train_cam", "train_affinity", "train_seg")


# -- small helpers ---------------------------------------------------------------------


def load_now() -> str:
    """The 1, 5 and 15 minute load averages."""
    return "load {:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def repeated(
    call: Callable[[], Any], warmup: Callable[[], Any] | None, repeats: int
) -> list[tuple[float, float]]:
    """(wall s, process CPU s) of `repeats` calls of `call`, after one call of `warmup`
    (or of `call`). CPU seconds count every thread's time: core-seconds."""
    (warmup or call)()
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return runs


def read_config(repo: Path) -> dict[str, Any]:
    """The repository's config.yaml."""
    return yaml.safe_load((repo / "config.yaml").read_text())


def human(seconds: float) -> str:
    """Seconds as s / min / h / days, two or three significant digits."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


# -- part 1: per-image cost ---------------------------------------------------------


def voc_like_image(long_side: int, seed: int = 0) -> np.ndarray:
    """A VOC-like landscape (H, W, 3) uint8 image, H = 3/4 W: a colour gradient with noise
    (bench_cam_inference's inputs)."""
    from bench_cam_inference import make_inputs

    image, _ = make_inputs(1, long_side, NUM_CLASSES, seed)[0]
    return image


def cam_like_maps(hw: tuple[int, int], classes: int = PRESENT_CLASSES, seed: int = 0) -> np.ndarray:
    """(classes, H, W) float32 CAM-like maps in [0, 1]: one smooth blob per class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    maps = []
    for _ in range(classes):
        cy, cx = rng.uniform(0.2, 0.8) * hw[0], rng.uniform(0.2, 0.8) * hw[1]
        sigma = rng.uniform(0.1, 0.25) * max(hw)
        maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    cams = np.stack(maps).astype(np.float32)
    return cams / cams.max(axis=(1, 2), keepdims=True)


def stage_settings(backbone: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a backbone is measured at: the committed config for `tiny`, the
    published defaults (`psa_core.settings`) for the ImageNet backbones, with a batch of
    `RESNET_BATCH` (the CPU cannot afford the published 16 / 8 / 20)."""
    import dataclasses

    from psa_core import settings

    sections = {
        "cam": settings.section(config, "cam"),
        "affinity": settings.section(config, "affinity"),
        "segmentation": settings.section(config, "segmentation"),
    }
    if backbone != "tiny":
        sections = {
            "cam": dataclasses.replace(settings.CamSettings(), batch_size=RESNET_BATCH),
            "affinity": dataclasses.replace(settings.AffinitySettings(), batch_size=RESNET_BATCH),
            "segmentation": dataclasses.replace(
                settings.SegmentationSettings(), batch_size=RESNET_BATCH
            ),
        }
    return {
        **sections,
        "cam_infer": settings.section(config, "cam.infer"),
        "seg_infer": settings.section(config, "segmentation.infer"),
        "crf": settings.section(config, "crf"),
        "walk": settings.section(config, "random_walk"),
        "walk_evaluate": settings.section(config, "random_walk.evaluate"),
    }


def train_step_seconds(
    model: Any, loss_fn: Callable, batch: tuple, train: Any, repeats: int
) -> list[tuple[float, float]]:
    """(wall s, CPU s) of `repeats` SGD steps (forward, loss, backward, update) on
    `batch`, the training loop's `_train_step` without its data loader; after one warm-up
    step."""
    from psa_core.training import build_optimizer

    model.train()
    optimizer, scheduler = build_optimizer(model, **train.optimizer_options(), max_step=1000)

    def step() -> None:
        loss, _ = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    return repeated(step, None, repeats)


def per_image_costs(backbone: str, config: Mapping[str, Any], repeats: int) -> dict[str, Any]:
    """Seconds per image of every stage for one backbone (see the module docstring)."""
    import torch

    from psa_core.affinity import affinity_pair_loss, num_from_cells, pair_labels
    from psa_core.cam import multilabel_soft_margin_loss, multiscale_cam
    from psa_core.constants import FEATURE_STRIDE
    from psa_core.models import create_model
    from psa_core.random_walk import padded_size, random_walk, scores_to_mask, walk_input
    from psa_core.segmentation import multiscale_softmax, probs_to_mask, segmentation_loss

    torch.manual_seed(0)
    s = stage_settings(backbone, config)
    image = voc_like_image(max(VOC_IMAGE_HW))
    assert image.shape[:2] == VOC_IMAGE_HW, image.shape
    small = voc_like_image(max(VOC_IMAGE_HW) // 2)  # the inference stages' warm-up
    label = np.zeros(NUM_CLASSES, dtype=np.float32)
    label[[2, 7, 14]] = 1
    rows: dict[str, dict[str, Any]] = {}

    def record(stage: str, runs: list[tuple[float, float]], note: str, images: int = 1) -> None:
        cpu = [c / images for _, c in runs]
        wall = [w / images for w, _ in runs]
        rows[stage] = {
            "s": statistics.median(cpu),
            "wall": statistics.median(wall),
            "runs": cpu,
            "note": note,
        }
        print(
            f"  {backbone} {stage}: {statistics.median(cpu):.3f} core-s/image, wall "
            f"{statistics.median(wall):.3f} ({', '.join(f'{x:.3f}' for x in cpu)}; {load_now()})",
            file=sys.stderr,
            flush=True,
        )

    # CAM network: training step, validation forward, multi-scale inference
    cam_train = s["cam"]
    net = create_model(backbone, "cam", NUM_CLASSES)
    crop, batch = cam_train.crop_size, cam_train.batch_size
    x = torch.randn(batch, 3, crop, crop)
    labels = torch.from_numpy(np.tile(label, (batch, 1)))
    runs = train_step_seconds(net, multilabel_soft_margin_loss, (x, labels), cam_train, repeats)
    record("train_cam", runs, f"{batch} crops of {crop}", batch)
    net.eval()
    with torch.inference_mode():
        runs = repeated(lambda: net(x), None, repeats)
    record("train_cam validation", runs, f"forward of {batch} crops of {crop}", batch)
    scales = s["cam_infer"].scales
    runs = repeated(
        lambda: multiscale_cam(net, image, label, scales),
        lambda: multiscale_cam(net, small, label, scales),
        repeats,
    )
    record("infer_cam", runs, f"scales {list(scales)} × flip")

    # CRF labels: two dense CRFs (backbone-independent)
    from psa_core.affinity import crf_stacks_job

    cams = cam_like_maps(VOC_IMAGE_HW)
    runs = repeated(lambda: crf_stacks_job((image, cams, s["crf"])), None, repeats)
    record("crf_labels", runs, f"2 CRFs of {PRESENT_CLASSES} + 1 labels, {s['crf'].iterations} it.")

    # AffinityNet: training step at its crop, forward of the padded image for the walk
    aff_train = s["affinity"]
    radius = aff_train.radius
    net = create_model(backbone, "affinity", NUM_CLASSES, radius=radius)
    crop, batch = aff_train.crop_size, aff_train.batch_size
    grid = crop // FEATURE_STRIDE
    rng = np.random.default_rng(0)
    label_map = rng.choice([0, 3, 8, 255], size=(grid, grid)).astype(np.uint8)
    pairs = [torch.from_numpy(np.stack([p] * batch)) for p in pair_labels(label_map, radius)]
    x = torch.randn(batch, 3, crop, crop)
    runs = train_step_seconds(net, affinity_pair_loss, (x, *pairs), aff_train, repeats)
    record("train_affinity", runs, f"{batch} crops of {crop}", batch)
    net.eval()
    pad_h, pad_w = padded_size(*VOC_IMAGE_HW)
    x = torch.randn(1, 3, pad_h, pad_w)
    with torch.inference_mode():
        runs = repeated(lambda: net(x), lambda: net(x[..., : pad_h // 2, : pad_w // 2]), repeats)
    record("random_walk: AffinityNet forward", runs, f"{pad_w}×{pad_h} padded image")

    # the walk itself and the evaluation's alpha sweep (backbone-independent)
    walk, sweep = s["walk"], s["walk_evaluate"]
    grid_hw = (pad_h // FEATURE_STRIDE, pad_w // FEATURE_STRIDE)
    aff = torch.rand(len_offsets(radius), num_from_cells(*grid_hw, radius))
    class_ids = np.array([2, 7, 14])

    def walk_one() -> np.ndarray:
        walked = random_walk(
            aff, torch.from_numpy(walk_input(cams, walk.alpha)), walk.beta, walk.logt
        )
        return scores_to_mask(walked, VOC_IMAGE_HW, class_ids)

    runs = repeated(walk_one, None, repeats)
    record(
        "random_walk: walk",
        runs,
        f"{grid_hw[1]}×{grid_hw[0]} grid, radius {radius}, beta {walk.beta:g}, logt {walk.logt}, "
        f"{PRESENT_CLASSES}+1 channels",
    )
    walked = random_walk(aff, torch.from_numpy(walk_input(cams, walk.alpha)), walk.beta, walk.logt)
    alphas = sorted({float(a) for a in sweep.alphas} | {float(walk.alpha)})

    def sweep_one() -> None:  # evaluate_random_walk's work on one image, no confusion matrix
        import psa_core.random_walk as rw

        if hasattr(rw, "alpha_sweep_masks"):  # since f2d775d
            rw.alpha_sweep_masks(
                aff, cams, walked, class_ids, alphas,
                walked_alpha=walk.alpha, beta=walk.beta, logt=walk.logt,
            )  # fmt: skip
            return
        backgrounds = np.stack([walk_input(cams, a)[0] for a in alphas])  # the loop before
        walked_bg = random_walk(aff, torch.from_numpy(backgrounds), walk.beta, walk.logt)
        for index in range(len(alphas)):
            stack = torch.cat([walked_bg[index : index + 1], walked[1:]])
            scores_to_mask(stack, VOC_IMAGE_HW, class_ids)

    runs = repeated(sweep_one, None, repeats)
    record("evaluate_random_walk", runs, f"{len(alphas)} alphas, one walk of their backgrounds")

    # segmentation network: training step, multi-scale inference
    seg_train = s["segmentation"]
    net = create_model(backbone, "seg", NUM_CLASSES, dilation=seg_train.dilation)
    crop, batch = seg_train.crop_size, seg_train.batch_size
    x = torch.randn(batch, 3, crop, crop)
    masks = torch.from_numpy(rng.choice([0, 3, 255], size=(batch, crop, crop)).astype(np.int64))
    runs = train_step_seconds(net, segmentation_loss, (x, masks), seg_train, repeats)
    record("train_seg", runs, f"{batch} crops of {crop}, dilation {seg_train.dilation}", batch)
    net.eval()
    infer = s["seg_infer"]

    def segment(img: np.ndarray) -> np.ndarray:
        return probs_to_mask(multiscale_softmax(net, [img], infer.scales, flip=infer.flip)[0])

    runs = repeated(lambda: segment(image), lambda: segment(small), repeats)
    record("infer_seg", runs, f"scales {list(infer.scales)}{' × flip' if infer.flip else ''}")

    parts = (rows["random_walk: AffinityNet forward"], rows["random_walk: walk"])
    rows["random_walk"] = {
        "s": sum(part["s"] for part in parts),
        "wall": sum(part["wall"] for part in parts),
        "runs": [],
        "note": "AffinityNet forward + walk",
    }
    return {"stages": rows, "peak_rss_mib": peak_rss_mib()}


def len_offsets(radius: int) -> int:
    """Pair offsets at `radius` (34 at 5)."""
    from psa_core.affinity import pair_offsets

    return len(pair_offsets(radius))


def run_per_image(backbones: Sequence[str], quick: bool, threads: int) -> dict[str, Any]:
    """Part 1 for every backbone; returns the figures with the machine's state."""
    import torch

    torch.set_num_threads(threads)
    config = read_config(REPO)
    result: dict[str, Any] = {"threads": threads, "load_before": load_now(), "backbones": {}}
    for backbone in backbones:
        repeats = 1 if quick or backbone != "tiny" else 3
        start = time.perf_counter()
        print(f"per-image costs, {backbone} ({load_now()})", file=sys.stderr, flush=True)
        figures = per_image_costs(backbone, config, repeats)
        figures["seconds"] = time.perf_counter() - start
        figures["repeats"] = repeats
        result["backbones"][backbone] = figures
    result["load_after"] = load_now()
    return result


PER_IMAGE_ORDER = (
    "train_cam",
    "train_cam validation",
    "infer_cam",
    "crf_labels",
    "train_affinity",
    "random_walk: AffinityNet forward",
    "random_walk: walk",
    "random_walk",
    "evaluate_random_walk",
    "train_seg",
    "infer_seg",
)


def per_image_table(result: Mapping[str, Any]) -> str:
    """The per-image table: stage, core-seconds (and wall seconds) per image for each
    measured backbone, what was measured."""
    backbones = list(result["backbones"])
    lines = [
        "| stage | "
        + " | ".join(f"s/image {b} (wall)" for b in backbones)
        + " | what (per backbone) |",
        "| --- | " + " | ".join("---:" for _ in backbones) + " | --- |",
    ]
    for stage in PER_IMAGE_ORDER:
        cells, notes = [], []
        for b in backbones:
            row = result["backbones"][b]["stages"].get(stage)
            cells.append(f"{row['s']:.3g} ({row['wall']:.3g})" if row else "–")
            if row and row["note"] not in notes:
                notes.append(row["note"])
        name = f"**{stage}**" if stage == "random_walk" else stage
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {' / '.join(notes)} |")
    return "\n".join(lines)


# -- part 2: growth with the dataset size ---------------------------------------------


def growth_override(num_train: int, num_val: int) -> dict[str, Any]:
    """The config override of a growth run: sizes, 1 epoch per trainer, shard_size 32."""
    return {
        "output_dir": "results",
        "dataset": {"shard_size": 32},
        "synthetic": {"num_train": num_train, "num_val": num_val},
        **{section: {"epochs": 1} for section in SECTIONS},
    }


def run_workflow(
    workdir: Path, num_train: int, num_val: int, job_threads: int | None
) -> dict[str, Any]:
    """One real `snakemake --cores 2` run in `workdir` (every job at most `job_threads`
    threads, None: the rules' own); its wall seconds and the load around it."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    override = workdir / "override.yaml"
    override.write_text(yaml.safe_dump(growth_override(num_train, num_val), sort_keys=False))
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--cores", "2", "--configfile", str(override), "--quiet",
    ]  # fmt: skip
    if job_threads:
        command += ["--max-threads", str(job_threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLURM_CONF": "/dev/null"}
    load = load_now()
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake in {workdir} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return {"wall_s": wall, "load_before": load, "load_after": load_now()}


def job_images(results: Path, rule: str, wildcards: str, sizes: Mapping[str, int]) -> int:
    """Images one job handled, from its benchmark file's name (`<split>-<shard>` or
    `<split>`) and the run's shard lists; the training split's size for a job of no split."""
    shard = re.fullmatch(r"(.+)-(\d{3,})", wildcards)
    if shard:
        listing = results / "index" / shard[1] / f"shard-{shard[2]}.txt"
        return sum(1 for line in listing.read_text().splitlines() if line.strip())
    if wildcards in sizes:
        return sizes[wildcards]
    if rule in ("generate_synthetic", "summarize"):
        return sum(sizes.values())
    return sizes["train"]


def number(value: str | None) -> float:
    """A benchmark TSV cell as a number; 0 for Snakemake's NA."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def read_benchmarks(results: Path, sizes: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Per rule: jobs, summed wall and CPU seconds, images, largest max_rss (MB), from its
    jobs' benchmark TSVs."""
    rules: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"jobs": 0, "s": 0.0, "cpu_s": 0.0, "images": 0, "max_rss": 0.0, "job_s": []}
    )
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        relative = tsv.relative_to(results / "benchmarks")
        rule = relative.parts[0].removesuffix(".tsv")
        wildcards = relative.stem if len(relative.parts) > 1 else ""
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        entry = rules[rule]
        entry["jobs"] += 1
        entry["s"] += float(row["s"])
        entry["cpu_s"] += number(row.get("cpu_time"))
        entry["job_s"].append(float(row["s"]))
        entry["images"] += job_images(results, rule, wildcards, sizes)
        entry["max_rss"] = max(entry["max_rss"], number(row.get("max_rss")))
    return dict(rules)


def mean_pixels(results: Path) -> float:
    """Mean pixel count of the generated dataset's images (to scale per-image costs)."""
    from PIL import Image

    sizes = [Image.open(f).size for f in (results / "synthetic" / "JPEGImages").glob("*.jpg")]
    return float(np.mean([w * h for w, h in sizes]))


def run_growth(
    sizes: Sequence[int], num_val: int, keep: Path | None, job_threads: int | None
) -> dict[str, Any]:
    """Part 2: the workflow at each training-set size; per-rule figures of each run."""
    result: dict[str, Any] = {"num_val": num_val, "job_threads": job_threads, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="cost_model_") as tmp:
        base = keep or Path(tmp)
        for n in sizes:
            workdir = base / f"n{n}"
            print(f"growth: num_train {n} ({load_now()})", file=sys.stderr, flush=True)
            run = run_workflow(workdir, n, num_val, job_threads)
            run["rules"] = read_benchmarks(workdir / "results", {"train": n, "val": num_val})
            run["mean_pixels"] = mean_pixels(workdir / "results")
            print(f"  {run['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
            result["runs"][str(n)] = run
    return result


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def growth_rows(growth: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per rule over the runs: images, wall and CPU seconds per image at each size, the
    least-squares fixed seconds and seconds per image of the wall time, the marginal wall
    seconds per image between consecutive sizes, and max_rss at each size.

    The fit uses the wall time: Snakemake samples `cpu_time` and `max_rss` (every 0.5 s
    for 30 s, then every 30 s), so both miss what comes after a long job's last sample.
    """
    runs = growth["runs"]
    sizes = sorted(runs, key=int)
    rules = [r for r in runs[sizes[-1]]["rules"] if all(r in runs[n]["rules"] for n in sizes)]
    rows = []
    for rule in rules:
        per = [runs[n]["rules"][rule] for n in sizes]
        images = [p["images"] for p in per]
        wall = [p["s"] for p in per]
        fixed, slope = fit_line(images, wall) if len(set(images)) > 1 else (wall[-1], 0.0)
        steps = [
            (wall[i + 1] - wall[i]) / (images[i + 1] - images[i])
            for i in range(len(sizes) - 1)
            if images[i + 1] != images[i]
        ]
        rows.append(
            {
                "rule": rule,
                "jobs": [p["jobs"] for p in per],
                "images": images,
                "wall_per_image": [w / i for w, i in zip(wall, images, strict=True)],
                "cpu_per_image": [p["cpu_s"] / p["images"] for p in per],
                "fixed_s": fixed,
                "slope": slope,
                "steps": steps,
                "max_rss": [p["max_rss"] for p in per],
            }
        )
    return rows


def growth_table(growth: Mapping[str, Any]) -> str:
    """The growth table, one row per rule, and the runs' wall times."""
    runs = growth["runs"]
    sizes = sorted(runs, key=int)
    lines = [
        "| rule | jobs | images | wall s/image | marginal wall s/image between sizes "
        "| fit: fixed s + s/image | CPU s/image (sampled) | max_rss MB (sampled) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in growth_rows(growth):
        lines.append(
            f"| {row['rule']} | {' / '.join(map(str, row['jobs']))} "
            f"| {' / '.join(map(str, row['images']))} "
            f"| {' / '.join(f'{x:.3f}' for x in row['wall_per_image'])} "
            f"| {' → '.join(f'{x:.4f}' for x in row['steps'])} "
            f"| {row['fixed_s']:.1f} + {row['slope']:.4f} "
            f"| {' / '.join(f'{x:.3f}' for x in row['cpu_per_image'])} "
            f"| {' / '.join(f'{x:.0f}' for x in row['max_rss'])} |"
        )
    walls = ", ".join(
        f"num_train {n}: {runs[n]['wall_s']:.0f} s ({runs[n]['load_before']} before)" for n in sizes
    )
    return (
        f"Sizes (num_train): {' / '.join(sizes)}; each cell lists the sizes in that order.\n\n"
        + "\n".join(lines)
        + f"\n\nWhole runs, wall: {walls}."
    )


# -- part 3: projection ------------------------------------------------------------------


def plan_jobs(kind: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """Per rule of Snakemake's plan of the full-size dataset (`voc` or `coco`): jobs and
    images, from a plain `snakemake -n` on list-only folders (shard_size 128)."""
    root = workdir / "data"
    if kind == "voc":
        from bench_dag_scale import VOC_SPLIT_SIZES, write_config, write_lists

        split_sizes = write_lists(root, 1.0)
        assert split_sizes == VOC_SPLIT_SIZES
        write_config(workdir, root, 128)
    else:
        from bench_coco_plan import COCO_2014_SPLITS, write_coco_config, write_coco_scale

        write_coco_scale(root)
        split_sizes = dict(COCO_2014_SPLITS)
        write_coco_config(workdir, root)
    shard_size = 128
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--cores", "2", "-n"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "SLURM_CONF": "/dev/null"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n of {kind} failed:\n{proc.stderr[-3000:]}")
    rules: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"jobs": 0, "images": 0, "splits": set()}
    )
    for block in re.split(r"^(?=rule \w+:)", proc.stdout + proc.stderr, flags=re.M):
        head = re.match(r"rule (\w+):", block)
        if not head:
            continue
        entry = rules[head[1]]
        entry["jobs"] += 1
        wildcards = dict(
            re.findall(r"(\w+)=([\w-]+)", (re.search(r"wildcards: (.*)", block) or [""])[0])
        )
        split = wildcards.get("split")
        if split is not None:
            entry["splits"].add(split)
            if "shard" in wildcards:
                first = int(wildcards["shard"]) * shard_size
                entry["images"] += min(shard_size, split_sizes[split] - first)
            else:
                entry["images"] += split_sizes[split]
    return {r: {**e, "splits": sorted(e["splits"])} for r, e in rules.items()} | {
        "_split_sizes": split_sizes
    }


def dataset_plan(kind: str) -> dict[str, Any]:
    """What a full VOC / COCO run does, per stage: images handled (epochs included for the
    trainers) and jobs, from the plan; the published epochs (psa_core.settings)."""
    from psa_core.settings import AffinitySettings, CamSettings, SegmentationSettings

    with tempfile.TemporaryDirectory(prefix=f"cost_plan_{kind}_") as tmp:
        rules = plan_jobs(kind, Path(tmp))
    split_sizes = rules.pop("_split_sizes")
    train = "train_aug" if kind == "voc" else "train2014"
    val = "val" if kind == "voc" else None
    eval_splits = ["train", "val"] if kind == "voc" else ["val2014"]
    epochs = {
        "train_cam": CamSettings().epochs,
        "train_affinity": AffinitySettings().epochs,
        "train_seg": SegmentationSettings().epochs,
    }
    stages = {rule: {"images": epochs[rule] * split_sizes[train], "jobs": 1} for rule in epochs}
    stages["train_cam validation"] = {
        "images": epochs["train_cam"] * split_sizes[val] if val else 0,
        "jobs": 0,
    }
    for rule in ("infer_cam", "crf_labels", "random_walk", "infer_seg"):
        stages[rule] = {"images": rules[rule]["images"], "jobs": rules[rule]["jobs"]}
        stages[rule]["splits"] = rules[rule]["splits"]
    # evaluated splits have masks in the real datasets (the list-only plan has none)
    stages["evaluate_random_walk"] = {
        "images": sum(split_sizes[s] for s in eval_splits),
        "jobs": len(eval_splits),
        "largest_job": max(split_sizes[s] for s in eval_splits),
    }
    return {
        "kind": kind,
        "split_sizes": split_sizes,
        "epochs": epochs,
        "train_split": train,
        "eval_splits": eval_splits,
        "stages": stages,
        "planned_jobs": sum(r["jobs"] for r in rules.values()),
    }


@dataclasses.dataclass(frozen=True)
class Node:
    """What one node gives each kind of job (the assumptions of a projection)."""

    name: str
    shard_slots: int
    """Shard jobs at once: its GPUs, or for the CPU projection its cores (1-thread jobs)."""
    crf_cores: int
    """Cores crf_labels spreads over (pydensecrf uses one a worker)."""
    trainer_speedup: float
    """Divides a trainer's seconds per image: 1 on a GPU; the cores a CPU trainer gets."""
    job_start_s: float
    """Start-up of a shard job before its loop (imports, model load)."""


def projection(
    plan: Mapping[str, Any], cost: Mapping[str, float], node: Node, nodes: int
) -> dict[str, float]:
    """Wall seconds of each stage, and their sum, on `nodes` copies of `node`.

    Trainers run one after the other (each needs the one before), each on one GPU (no
    data parallelism in the workflow), so nodes do not speed them up. Shard jobs
    (infer_cam, random_walk, infer_seg) spread perfectly over every slot of every node,
    each paying `job_start_s` once; crf_labels over every core. evaluate_random_walk runs
    one job per evaluated split beside train_seg: only what outlasts train_seg counts.
    The other evaluation, export and report jobs are left out (seconds at the synthetic
    size, in the growth table). `cost`: seconds per image on one slot (crf_labels,
    CPU stages: core-seconds).
    """
    st = plan["stages"]
    out = {}
    for rule in TRAIN_RULES:
        out[rule] = st[rule]["images"] * cost[rule] / node.trainer_speedup
    validation = st["train_cam validation"]["images"] * cost["train_cam validation"]
    out["train_cam"] += validation / node.trainer_speedup
    for rule in GPU_SHARD_RULES:
        work = st[rule]["images"] * cost[rule] + st[rule]["jobs"] * node.job_start_s
        out[rule] = work / (node.shard_slots * nodes)
    out["crf_labels"] = st["crf_labels"]["images"] * cost["crf_labels"] / (node.crf_cores * nodes)
    largest = st["evaluate_random_walk"]["largest_job"]
    evaluation = largest * cost["evaluate_random_walk"]
    out["evaluate_random_walk (beside train_seg)"] = max(0.0, evaluation - out["train_seg"])
    out["total"] = sum(out.values())
    return out


def pixel_ratio(hw: tuple[int, int], reference: tuple[int, int]) -> float:
    return hw[0] * hw[1] / (reference[0] * reference[1])


def stage_costs(per_image: Mapping[str, Any] | None, kind: str) -> dict[str, dict[str, float]]:
    """Seconds per image of each stage for resnet38d at the dataset's image size (the
    inference stages scaled by the pixel count; the trainers work on fixed crops).

    `cpu`: part 1's core-seconds (this machine, one thread). `gpu`: the `H200` figures,
    except the two the GPU runs did not measure: the CAM validation pass (part 1's ratio
    of validation to training, applied to the GPU's training rate) and
    evaluate_random_walk, a CPU job whose GPU-run figure predates the alpha sweep of
    f2d775d (part 1's figure instead).
    """
    hw = VOC_IMAGE_HW if kind == "voc" else COCO_IMAGE_HW
    costs: dict[str, dict[str, float]] = {}
    cpu: dict[str, float] = {}
    if per_image and "resnet38d" in per_image["backbones"]:
        measured = {k: v["s"] for k, v in per_image["backbones"]["resnet38d"]["stages"].items()}
        to_size = pixel_ratio(hw, VOC_IMAGE_HW)  # measured at 500×375
        cpu = {
            rule: measured[rule] * (1.0 if rule.startswith("train_") else to_size)
            for rule in (*TRAIN_RULES, "train_cam validation", *GPU_SHARD_RULES, "crf_labels",
                         "evaluate_random_walk")
        }  # fmt: skip
        costs["cpu"] = cpu
    to_size = pixel_ratio(hw, H200_IMAGE_HW)  # measured at 448×448
    gpu = {rule: 1 / H200[rule]["img_s"] for rule in TRAIN_RULES}
    validation_ratio = cpu["train_cam validation"] / cpu["train_cam"] if cpu else 1.0
    gpu["train_cam validation"] = gpu["train_cam"] * validation_ratio
    for rule in GPU_SHARD_RULES:
        gpu[rule] = to_size / H200[rule]["img_s"]
    gpu["crf_labels"] = to_size * H200["crf_labels"]["core_s"]
    gpu["evaluate_random_walk"] = (
        cpu["evaluate_random_walk"] if cpu else to_size / H200["evaluate_random_walk"]["img_s"]
    )
    costs["gpu"] = gpu
    return costs


STAGE_ORDER = (
    "train_cam",
    "infer_cam",
    "crf_labels",
    "train_affinity",
    "random_walk",
    "train_seg",
    "evaluate_random_walk (beside train_seg)",
    "infer_seg",
)


def projection_tables(
    plans: Mapping[str, Any],
    per_image: Mapping[str, Any] | None,
    nodes: Sequence[int],
    gpus: int,
    cores: int,
    cpu_trainer_cores: int,
    cpu_job_start: float,
) -> str:
    """Markdown: the plan's images per stage, then per dataset and source (CPU, H200) the
    seconds per image and the wall time of each stage on 1..N nodes."""
    out = []
    lines = [
        "| stage | " + " | ".join(f"{k.upper()} images (jobs)" for k in plans) + " |",
        "| --- | " + " | ".join("---:" for _ in plans) + " |",
    ]
    for rule in (*TRAIN_RULES, "train_cam validation", "infer_cam", "crf_labels",
                 "random_walk", "infer_seg", "evaluate_random_walk"):  # fmt: skip
        cells = []
        for plan in plans.values():
            st = plan["stages"][rule]
            cells.append(f"{st['images']:,} ({st['jobs']:,})")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
    gpu_node = Node(f"{gpus}-GPU node", gpus, cores, 1, H200["job_start"]["s"])
    cpu_node = Node(f"{cores}-core node", cores, cores, cpu_trainer_cores, cpu_job_start)
    this_vm = Node("this VM (2 cores)", 2, 2, 2, cpu_job_start)
    for kind, plan in plans.items():
        for source, cost in stage_costs(per_image, kind).items():
            if source == "cpu":
                columns = [(this_vm, 1)] + [(cpu_node, n) for n in nodes]
                label = (
                    f"{kind.upper()}, **CPU projection** from this machine's core-seconds per "
                    f"image (1 thread; resnet38d): shard jobs over every core of {cores}-core "
                    f"nodes, each trainer on {cpu_trainer_cores} cores, perfect scaling"
                )
            else:
                columns = [(gpu_node, n) for n in nodes]
                label = (
                    f"{kind.upper()}, **GPU projection** from the H200 figures of RESULTS.md: "
                    f"{gpus} GPUs and {cores} CPU cores a node, one trainer at a time on one GPU"
                )
            projected = [projection(plan, cost, node, n) for node, n in columns]
            names = [
                node.name if node is this_vm else f"{n} node{'s' if n > 1 else ''}"
                for node, n in columns
            ]
            lines = [
                label,
                "",
                "| stage | s/image | " + " | ".join(names) + " |",
                "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
            ]
            for stage in (*STAGE_ORDER, "total"):
                rule = stage.split(" ")[0]
                per = f"{cost[rule]:.3g}" if rule in cost else ""
                cells = " | ".join(human(p[stage]) for p in projected)
                name = f"**{stage}**" if stage == "total" else stage
                lines.append(f"| {name} | {per} | {cells} |")
            out.append("\n".join(lines))
    return "\n\n".join(out)


SPLIT_JOBS = {
    "evaluate_cam": "eval",
    "evaluate_crf_labels": "eval",
    "evaluate_random_walk": "eval",
    "evaluate_seg": "eval",
    "export_masks": "train",
}
"""CPU jobs that handle a whole split in one job (no sharding): which split."""


def split_jobs_table(plans: Mapping[str, Any], growth: Mapping[str, Any]) -> str:
    """Markdown: each one-job-per-split CPU rule at full size, projected from the growth
    fit (fixed s + s/image at the synthetic images' mean pixel count, the per-image part
    scaled to the dataset's image size); the largest such job of each dataset."""
    runs = growth["runs"]
    largest = runs[max(runs, key=int)]
    synthetic_px = largest.get("mean_pixels")
    if not synthetic_px:
        return ""
    fits = {row["rule"]: row for row in growth_rows(growth)}
    lines = [
        "| rule (one job per split) | fit at the synthetic size: fixed s + s/image | "
        + " | ".join(f"{k.upper()}: largest job, images → projected wall" for k in plans)
        + " |",
        "| --- | --- | " + " | ".join("---:" for _ in plans) + " |",
    ]
    for rule, which in SPLIT_JOBS.items():
        if rule not in fits:
            continue
        row = fits[rule]
        cells = []
        for kind, plan in plans.items():
            hw = VOC_IMAGE_HW if kind == "voc" else COCO_IMAGE_HW
            sizes = plan["split_sizes"]
            images = (
                sizes[plan["train_split"]]
                if which == "train"
                else max(sizes[s] for s in plan["eval_splits"])
            )
            if row["slope"] <= 0:
                cells.append(f"{images:,} → no per-image cost above the noise")
                continue
            per_image = row["slope"] * hw[0] * hw[1] / synthetic_px
            cells.append(f"{images:,} → {human(row['fixed_s'] + per_image * images)}")
        lines.append(
            f"| {rule} | {row['fixed_s']:.1f} + {row['slope']:.4f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------


def machine() -> str:
    """This machine in one line: CPU, cores, memory, torch, Python, code measured."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text())
        model = names[0] if names else ""
    return (
        f"{model or platform.machine()}, {os.cpu_count()} CPUs, {memory:.0f} GiB, "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"code {os.environ.get(FROZEN_ENV, 'checkout ' + git_head())}"
    )


def git_head() -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return proc.stdout.strip() or "unknown"


def rerun_in_archive(revision: str, argv: Sequence[str]) -> int:
    """Run this script again inside a `git archive` of `revision`; its exit code."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", revision],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cost_model_code_") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        script = Path(tmp) / "benchmarks" / Path(__file__).name
        shutil.copy(__file__, script)  # this script itself may not be committed yet
        env = {**os.environ, FROZEN_ENV: f"{commit} (git archive)", "PYTHONPATH": tmp}
        args = [str(Path(a).resolve()) if Path(a).suffix == ".json" else a for a in argv]
        return subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp).returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", nargs="*", choices=["per-image", "growth"], default=["per-image", "growth"],
        help="parts to measure (none: projections from --load only)",
    )  # fmt: skip
    parser.add_argument("--backbones", nargs="+", default=["tiny", "resnet38d"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one repeat; growth at 32 / 64 / 128 (resnet38d still takes about 8 min)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="num_train of the growth runs")
    parser.add_argument("--num-val", type=int, default=32, help="num_val of the growth runs")
    parser.add_argument(
        "--job-threads", type=int, default=1, help="threads of a growth job (0: the rules' own)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for part 1 (1: core-seconds)"
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument(
        "--cores-per-node", type=int, default=128, help="16 a GPU, as on the H200 machine"
    )
    parser.add_argument(
        "--cpu-trainer-cores", type=int, default=16, help="cores of a trainer (CPU projection)"
    )
    parser.add_argument(
        "--cpu-job-start", type=float, default=3.0, help="start-up s of a CPU job (Python, torch)"
    )
    parser.add_argument("--no-projection", action="store_true")
    parser.add_argument("--code", default="HEAD", help="a git revision to archive, or checkout")
    parser.add_argument("--keep", type=Path, help="keep the growth runs' folders here")
    parser.add_argument("--save", type=Path, help="write every figure here (JSON)")
    parser.add_argument("--load", type=Path, help="figures of an earlier --save")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [32, 64, 128] if args.quick else [100, 400, 1600]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.code != "checkout" and FROZEN_ENV not in os.environ:
        return rerun_in_archive(args.code, argv)
    data: dict[str, Any] = json.loads(args.load.read_text()) if args.load else {}
    data["machine"] = data.get("machine") if not args.parts else machine()
    data.setdefault("date", datetime.date.today().isoformat())
    start = time.perf_counter()
    if "per-image" in args.parts:
        data["per_image"] = run_per_image(args.backbones, args.quick, args.threads)
    if "growth" in args.parts:
        data["growth"] = run_growth(args.sizes, args.num_val, args.keep, args.job_threads or None)
    if not args.no_projection:
        data["plans"] = {kind: dataset_plan(kind) for kind in ("voc", "coco")}
    if args.parts:  # the measuring time; a projection of loaded figures keeps theirs
        data["seconds"] = time.perf_counter() - start + (data.get("seconds") or 0)
    if args.save:
        args.save.write_text(json.dumps(data, indent=1, default=list))

    print(f"\n`python benchmarks/cost_model.py {' '.join(argv)}` — {data['date']}, {data['machine']}, "
          f"{data['seconds']:.0f} s.\n")  # fmt: skip
    if "per_image" in data:
        p = data["per_image"]
        print(f"Per image at 500×375 (torch threads: {p['threads']}; {p['load_before']} before, "
              f"{p['load_after']} after; peak RSS "
              + ", ".join(f"{b} {v['peak_rss_mib']:.0f} MiB" for b, v in p["backbones"].items())
              + "):\n")  # fmt: skip
        print(per_image_table(p) + "\n")
    if "growth" in data:
        print(
            f"Growth (num_val {data['growth']['num_val']}, 1 epoch per trainer, shard_size 32):\n"
        )
        print(growth_table(data["growth"]) + "\n")
    if "plans" in data:
        print(
            projection_tables(
                data["plans"],
                data.get("per_image"),
                args.nodes,
                args.gpus_per_node,
                args.cores_per_node,
                args.cpu_trainer_cores,
                args.cpu_job_start,
            )
        )
        if "growth" in data:
            print("\n" + split_jobs_table(data["plans"], data["growth"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
