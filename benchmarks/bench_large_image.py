"""Benchmark: peak memory of every stage on one 12-megapixel photo (issue 15 item 7).

Makes a 4000x3000 photo-like test image (a synthetic scene of two classes,
upscaled bicubically, with sensor-like noise and JPEG compression) and its
ground-truth mask in a VOC-layout folder, untrained `tiny` weights for the
CAM, affinity and segmentation networks, then runs each stage's `psa` command
on that image as its own subprocess, once per `dataset.max_side` value
(`none`: no limit, the pipeline before issue 15; the default 1024). A stage's
peak RSS is the child's own `ru_maxrss` (`os.wait4`), so one stage never
counts another. The masks that leave the pipeline (infer-seg, predict and its
overlay) are checked to have the image's original size.

    python benchmarks/bench_large_image.py                # max_side none, then 1024
    python benchmarks/bench_large_image.py --max-side 1024 --max-side 512
    python benchmarks/bench_large_image.py --max-side 1024 --copies 8   # a shard of 8 photos

`--legacy DIR` adds a column for an older checkout (e.g. `git archive e03ac1d |
tar -x -C DIR`): its stages run in DIR, without `--max-side`.
The numbers go into benchmarks/RESULTS.md ("Large images (issue 15 item 7)").
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from psa_core import io
from psa_core.data.synthetic import generate
from psa_core.models import build_model

REPO = Path(__file__).resolve().parents[1]

SIZE_WH = (4000, 3000)
"""The test photo: 12 megapixels, 4:3."""

NAME = "big"
NUM_CLASSES = 2
TRAINING = [  # the demo's small crops, one image a step, one epoch
    "--backbone", "tiny", "--batch-size", "1", "--epochs", "1", "--crop-size", "128",
    "--device", "cpu", "--threads", "2",
]  # fmt: skip
RESIZE = ["--resize-long", "96", "160"]


def make_photo(folder: Path, copies: int = 1) -> Path:
    """A VOC-layout folder holding a 4000x3000 image `big` with its mask, `copies` times
    (big, big-1, ...), all in the split list `big` (one shard)."""
    root = folder / "data"
    generate(root, num_train=8, num_val=1, image_size=(150, 200), num_classes=NUM_CLASSES, seed=3)
    # the first synthetic training image that shows both classes
    for path in sorted((root / "SegmentationClass").glob("*.png")):
        mask = io.read_mask(path)
        if {1, 2} <= set(np.unique(mask).tolist()):
            break
    image = Image.open(root / "JPEGImages" / f"{path.stem}.jpg").convert("RGB")
    big = np.asarray(image.resize(SIZE_WH, Image.Resampling.BICUBIC), dtype=np.int16)
    rng = np.random.default_rng(0)
    big = np.clip(big + rng.normal(0, 6, big.shape).astype(np.int16), 0, 255).astype(np.uint8)
    Image.fromarray(big).save(root / "JPEGImages" / f"{NAME}.jpg", quality=90)
    gt = Image.fromarray(mask, mode="P").resize(SIZE_WH, Image.Resampling.NEAREST)
    io.write_mask(root / "SegmentationClass" / f"{NAME}.png", np.asarray(gt))
    names = [NAME, *(f"{NAME}-{i}" for i in range(1, copies))]
    for name in names[1:]:
        for sub, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            os.link(root / sub / f"{NAME}{suffix}", root / sub / f"{name}{suffix}")
    (root / "ImageSets" / "Segmentation" / f"{NAME}.txt").write_text("\n".join(names) + "\n")
    return root


def write_weights(folder: Path) -> dict[str, Path]:
    """Untrained tiny weights (seed 0) of the three networks: memory does not depend on training."""
    paths = {}
    for head, options in (("cam", {}), ("affinity", {}), ("seg", {"dilation": 4})):
        torch.manual_seed(0)
        paths[head] = folder / f"{head}.pt"
        io.save_torch(paths[head], build_model("tiny", head, NUM_CLASSES, **options).state_dict())
    return paths


@dataclass
class Result:
    stage: str
    max_rss_mib: float
    wall_s: float


# A forked child's peak RSS includes the pages it shared with its parent before
# exec, so the stage is started by this small trampoline, not by the benchmark
# process (which holds torch and the photo): it prints its child's ru_maxrss.
_TRAMPOLINE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status), file=sys.stderr)
"""


def run_stage(stage: str, args: list[str], checkout: Path, log: Path) -> Result:
    """`psa STAGE ARGS` of `checkout` as a child process: its own peak RSS (wait4) and wall
    time. It runs in the checkout, which `python -m` puts first on the path."""
    with open(log, "a") as out:
        out.write(f"\n$ psa {stage} {' '.join(args)}\n")
    command = [sys.executable, "-c", _TRAMPOLINE, sys.executable, "-m", "psa_core", stage, *args]
    start = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True, cwd=checkout)
    wall = time.perf_counter() - start
    *output, last = proc.stderr.strip().splitlines()
    with open(log, "a") as out:
        out.write("\n".join(output) + "\n")
    max_rss_kib, code = (int(v) for v in last.split())
    if code != 0:
        raise SystemExit(f"psa {stage} failed (exit {code}); see {log}")
    return Result(stage, max_rss_kib / 1024, wall)  # ru_maxrss is in KiB on Linux


def run_all(root: Path, weights: dict[str, Path], work: Path, max_side: list[str],
            checkout: Path) -> list[Result]:  # fmt: skip
    """Every stage on the photo, in pipeline order; `max_side` the option of the stages
    that take it ([] for a legacy checkout)."""
    work.mkdir(parents=True)
    log = work / "psa.log"
    names = io.read_lines(root / "ImageSets" / "Segmentation" / f"{NAME}.txt")
    io.write_lines(work / "photos.txt", [str(root / "JPEGImages" / f"{n}.jpg") for n in names])
    index = work / "index"
    data = ["--root", str(root), "--images", str(index / "images.txt"),
            "--labels", str(index / "labels.json")]  # fmt: skip
    threads = ["--device", "cpu", "--threads", "2"]
    stages = [
        ("index", ["--root", str(root), "--split", NAME, "--out-images", str(index / "images.txt"),
                   "--out-labels", str(index / "labels.json")]),
        ("train-cam", [*data, *TRAINING, *RESIZE, "--checkpoint", str(work / "cam-ckpt.pt"),
                       "--out-log", str(work / "cam-log.csv"), "--out", str(work / "cam.pt")]),
        ("infer-cam", [*data, "--weights", str(weights["cam"]), "--backbone", "tiny", *threads,
                       *max_side, "--out", str(work / "cam.h5")]),
        ("evaluate-cam", [*data, "--cams", str(work / "cam.h5"), "--out-json",
                          str(work / "cam.json"), "--out-csv", str(work / "cam.csv"),
                          "--out-svg", str(work / "cam.svg")]),
        ("crf-labels", [*data, "--cams", str(work / "cam.h5"), "--out", str(work / "crf.h5"),
                        "--out-maps", str(work / "crf-maps")]),
        ("evaluate-crf-labels", [*data, "--crf", str(work / "crf.h5"), "--out-json",
                                 str(work / "crf.json"), "--out-csv", str(work / "crf.csv")]),
        ("train-affinity", [*data, "--crf", str(work / "crf.h5"), *TRAINING,
                            "--checkpoint", str(work / "aff-ckpt.pt"),
                            "--out-log", str(work / "aff-log.csv"), "--out", str(work / "aff.pt")]),
        ("random-walk", [*data, "--cams", str(work / "cam.h5"), "--weights",
                         str(weights["affinity"]), "--backbone", "tiny", *threads,
                         "--out", str(work / "rw.h5"), "--out-affinity", str(work / "rw-aff.h5"),
                         "--out-masks", str(work / "rw-masks")]),
        ("evaluate-random-walk", [*data, "--walks", str(work / "rw.h5"), "--affinities",
                                  str(work / "rw-aff.h5"), "--cams", str(work / "cam.h5"),
                                  "--out-json", str(work / "rw.json"), "--out-csv",
                                  str(work / "rw.csv"), "--out-plot", str(work / "rw.svg")]),
        ("train-seg", [*data, "--masks", str(work / "rw-masks"), *TRAINING, *RESIZE,
                       "--dilation", "4", "--checkpoint", str(work / "seg-ckpt.pt"),
                       "--out-log", str(work / "seg-log.csv"), "--out", str(work / "seg.pt")]),
        ("package-seg-model", ["--weights", str(weights["seg"]), "--labels",
                               str(index / "labels.json"), "--backbone", "tiny",
                               "--dilation", "4", *max_side, "--out", str(work / "model")]),
        ("infer-seg", ["--root", str(root), "--images", str(index / "images.txt"),
                       "--model", str(work / "model"), *threads,
                       "--out-masks", str(work / "seg-masks")]),
        ("evaluate-seg", [*data, "--masks", str(work / "seg-masks"), "--out-json",
                          str(work / "seg.json"), "--out-csv", str(work / "seg.csv")]),
        ("predict", ["--model", str(work / "model"), "--images", str(work / "photos.txt"),
                     "--out", str(work / "predicted"), "--overlay", *threads]),
    ]  # fmt: skip
    results = []
    for stage, args in stages:
        results.append(run_stage(stage, args, checkout, log))
        print(f"  {stage}: {results[-1].max_rss_mib:.0f} MiB, {results[-1].wall_s:.1f} s")
    made = [*(work / "seg-masks").glob("*.png"), *(work / "predicted").glob("*.*")]
    assert len(made) == 3 * len(names), made
    for path in made:
        with Image.open(path) as img:
            assert img.size == SIZE_WH, f"{path}: {img.size}, expected the original {SIZE_WH}"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-side", action="append", help="values to run (default: none, then 1024)"
    )
    parser.add_argument("--legacy", type=Path, help="an older checkout to run first")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--copies", type=int, default=1, help="photos in the split, one shard (default 1)"
    )
    args = parser.parse_args()
    values = args.max_side or ["none", "1024"]
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        root = make_photo(folder, args.copies)
        weights = write_weights(folder)
        columns: dict[str, list[Result]] = {}
        if args.legacy:
            print(f"legacy checkout {args.legacy}:")
            columns[f"legacy ({args.legacy.name})"] = run_all(
                root, weights, folder / "legacy", [], args.legacy.resolve()
            )
        for value in values:
            print(f"max_side {value}:")
            columns[f"max_side {value}"] = run_all(
                root, weights, folder / f"max-side-{value}", ["--max-side", value], REPO
            )
    names = list(columns)
    print(
        f"\n`python benchmarks/bench_large_image.py` at {commit} on {platform.machine()} "
        f"({os.cpu_count()} CPUs), torch {torch.__version__}, {datetime.date.today()}; "
        f"{args.copies} {SIZE_WH[0]}x{SIZE_WH[1]} JPEG(s) in one shard, tiny, {NUM_CLASSES} "
        "classes; peak RSS of each "
        "`psa` process (MiB) and its wall time (s):\n"
    )
    print("| stage | " + " | ".join(f"{n}: RSS | {n}: wall" for n in names) + " |")
    print("| --- |" + " ---: | ---: |" * len(names))
    for i, first in enumerate(columns[names[0]]):
        cells = [f"{columns[n][i].max_rss_mib:.0f} | {columns[n][i].wall_s:.1f}" for n in names]
        print(f"| {first.stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
