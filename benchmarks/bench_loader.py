"""Benchmark: the CAM trainer's input pipeline alone (no network), before and after issue 18.

Three routes over the same generated JPEGs, the same samples and the same
worker count, one after the other in one run:

- before: no image cache, a new DataLoader (and new workers) every epoch, torch's
  default prefetch (the training loop before issue 18);
- one loader: `psa_core.training.training_loader` over a `RunBatchSampler`
  (workers started once, `PREFETCH_BATCHES` ahead), no image cache;
- after: the same with the decoded-image cache (`image_cache_mb`).

Each epoch's images/s is counted from the epoch's start (loader construction
included for "before") to its last batch; the routes take turns, `--repeats`
times, and the table gives each route's median. CPU ms per image (this process
and its workers, user + system) is the figure that other load on the machine
moves least. Every route's batches are checked to be bit-identical to the
first route's. Prints a markdown table for benchmarks/RESULTS.md.

    python benchmarks/bench_loader.py --images 64 --epochs 3 --workers 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psa_core import io  # noqa: E402
from psa_core.cam import CamTrainDataset  # noqa: E402
from psa_core.settings import CamSettings  # noqa: E402
from psa_core.training import (  # noqa: E402
    EpochBatchSampler,
    RunBatchSampler,
    sample_rng,
    training_loader,
)
from psa_core.transforms import (  # noqa: E402
    IMAGENET_NORMALIZATION,
    CamTrainTransform,
    training_transform,
)

SEED = 0
NUM_CLASSES = 20


def write_images(root: Path, count: int, width: int, height: int) -> dict[str, np.ndarray]:
    """`count` VOC-sized JPEGs (quality 90) under root/JPEGImages; returns name -> label."""
    rng = np.random.default_rng(SEED)
    (root / "JPEGImages").mkdir(parents=True)
    yy, xx = np.mgrid[0:height, 0:width]
    labels = {}
    for index in range(count):
        base = np.stack([xx * 255 / width, yy * 255 / height, 128 + 0 * xx], axis=-1)
        image = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        y, x = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        image[y : y + height // 3, x : x + width // 3] = rng.integers(0, 256, size=3)
        name = f"img_{index:04d}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        label = np.zeros(NUM_CLASSES, dtype=np.float32)
        label[index % NUM_CLASSES] = 1
        labels[name] = label
    return labels


def batch_digest(batch: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for tensor in batch:
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_route(route: str, root: Path, labels, args) -> tuple[list[float], float, list[str]]:
    """(images/s per epoch, CPU ms per image, digest per batch) of one route."""
    cpu_start = cpu_seconds()
    settings = CamSettings()  # the published augmentation: crop 448, resize [256, 512]
    transform = training_transform(CamTrainTransform, IMAGENET_NORMALIZATION, settings)
    cache_mb = args.cache_mb if route == "after" else 0
    names = sorted(labels)
    dataset = CamTrainDataset(root, names, labels, transform, SEED, cache_mb=cache_mb)
    steps = len(names) // args.batch_size
    rates, digests = [], []
    start = time.perf_counter()
    if route == "before":
        for epoch in range(args.epochs):
            sampler = EpochBatchSampler(len(names), args.batch_size, SEED, epoch)
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=args.workers,
                generator=torch.Generator(),
            )
            digests += [batch_digest(batch) for batch in loader]
            del loader
            now = time.perf_counter()
            rates.append(steps * args.batch_size / (now - start))
            start = now
    else:
        sampler = RunBatchSampler(len(names), args.batch_size, SEED, args.epochs, 0, 0)
        batches = iter(training_loader(dataset, sampler, args.workers, torch.device("cpu")))
        for _ in range(args.epochs):
            digests += [batch_digest(next(batches)) for _ in range(steps)]
            now = time.perf_counter()
            rates.append(steps * args.batch_size / (now - start))
            start = now
        del batches  # the workers exit: their CPU time is counted
    cpu_ms = (cpu_seconds() - cpu_start) * 1e3 / (args.epochs * steps * args.batch_size)
    return rates, cpu_ms, digests


def sample_breakdown(root: Path, labels) -> tuple[float, float]:
    """(decode, augmentation) ms per image, one process: what the cache saves of a sample."""
    settings = CamSettings()
    transform = training_transform(CamTrainTransform, IMAGENET_NORMALIZATION, settings)
    paths = [root / "JPEGImages" / f"{name}.jpg" for name in sorted(labels)]
    start = time.perf_counter()
    images = [io.read_image(path) for path in paths]
    decode = time.perf_counter() - start
    start = time.perf_counter()
    for index, image in enumerate(images):
        transform(image, sample_rng(SEED, 0, index))
    augment = time.perf_counter() - start
    return decode * 1e3 / len(paths), augment * 1e3 / len(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=CamSettings.batch_size)
    parser.add_argument(
        "--workers",
        type=int,
        default=max(0, (os.cpu_count() or 1) - 1),
        help="DataLoader workers (default: the CPUs - 1, as num_workers: auto on a job "
        "given every CPU)",
    )
    parser.add_argument("--cache-mb", type=float, default=CamSettings.image_cache_mb)
    parser.add_argument("--repeats", type=int, default=3, help="turns of the three routes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    routes = ("before", "one loader", "after")
    runs: dict[str, list[tuple[list[float], float]]] = {route: [] for route in routes}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = write_images(root, args.images, args.width, args.height)
        decode_ms, augment_ms = sample_breakdown(root, labels)
        for _ in range(args.repeats):
            for route in routes:
                rates, cpu_ms, digests = run_route(route, root, labels, args)
                reference = reference or digests
                if digests != reference:
                    print(f"route {route}: batches differ from route before", file=sys.stderr)
                    return 1
                runs[route].append((rates, cpu_ms))
    print(
        f"{args.images} JPEGs {args.width}x{args.height}, batch {args.batch_size}, "
        f"{args.epochs} epochs, {args.workers} worker(s), CAM augmentation at the published "
        f"settings; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}; medians of "
        f"{args.repeats} turns; batches bit-identical across routes and turns\n"
    )
    epochs = " | ".join(f"epoch {e + 1} img/s" for e in range(args.epochs))
    print(f"| route | {epochs} | run img/s | CPU ms / img |")
    print("| --- |" + " ---: |" * (args.epochs + 2))
    for route in routes:
        per_epoch = [statistics.median(r[0][e] for r in runs[route]) for e in range(args.epochs)]
        # a run's images/s: equal images per epoch, so the harmonic mean of its epochs'
        total = statistics.median(len(r[0]) / sum(1 / x for x in r[0]) for r in runs[route])
        cpu_ms = statistics.median(r[1] for r in runs[route])
        cells = " | ".join(f"{r:.1f}" for r in per_epoch)
        print(f"| {route} | {cells} | {total:.1f} | {cpu_ms:.1f} |")
    print(
        f"\nOne sample in one process: decode {decode_ms:.1f} ms (what the cache saves from "
        f"epoch 2 on), augmentation {augment_ms:.1f} ms."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
