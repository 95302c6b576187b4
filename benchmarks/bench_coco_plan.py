"""Benchmark: the plan-time cost of a COCO-2014-scale dataset (`split_listing`).

Writes COCO 2014's two annotation files at full image count, without any
image: `annotations/instances_train2014.json` (82,783 image entries) and
`annotations/instances_val2014.json` (40,504), the 80 categories with COCO's
ids (1..90 with gaps), and one tiny polygon per image so that every image is
listed (the real files hold about 7.3 larger polygons an image: pass
`--annotations-per-image 7` for a nearer parse cost). Then times, per split,
`psa_core.data.coco.split_listing` (the parse), `cached_split_listing` with no
cache (the parse plus writing the cache) and with its cache (the plan-time
cost of every later Snakemake run). Prints a markdown table.

    python benchmarks/bench_coco_plan.py
    python benchmarks/bench_coco_plan.py --repeats 3 --annotations-per-image 7

`--dag` then times what a user waits for: `snakemake -n --quiet rules` on
the repository's Snakefile with `dataset.kind: coco`, `train_split:
train2014`, `eval_splits: [val2014]`, `shard_size: 128` (the first plan parses
both files and writes their caches; the second reads the caches).

    python benchmarks/bench_coco_plan.py --dag
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psa_core.data import coco  # noqa: E402

COCO_2014_SPLITS = {"train2014": 82_783, "val2014": 40_504}
"""Images per split of COCO 2014 (those without annotations included)."""

COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse",
    20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe",
    27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee",
    35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket",
    44: "bottle", 46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon",
    51: "bowl", 52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli",
    57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair",
    63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv",
    73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone",
    78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book",
    85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier",
    90: "toothbrush",
}  # fmt: skip
"""COCO's 80 categories by id, as in the 2014 annotation files."""


def coco_scale_annotations(split: str, num_images: int, per_image: int = 1) -> dict:
    """A COCO annotation file's content: `num_images` 640x480 image entries, `per_image`
    tiny triangles on each, categories taken in turn."""
    ids = list(COCO_CATEGORIES)
    images, annotations = [], []
    for i in range(num_images):
        image_id = i + 1
        images.append(
            {
                "license": 1,
                "file_name": f"COCO_{split}_{image_id:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/{split}/COCO_{split}_{image_id:012d}.jpg",
                "height": 480,
                "width": 640,
                "date_captured": "2013-11-14 16:28:13",
                "id": image_id,
            }
        )
        for k in range(per_image):
            x, y = 10 + 20 * k, 10
            annotations.append(
                {
                    "segmentation": [[x, y, x + 12.5, y, x + 6.0, y + 9.5]],
                    "area": 59.4,
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": [x, y, 12.5, 9.5],
                    "category_id": ids[(i + k) % len(ids)],
                    "id": len(annotations) + 1,
                }
            )
    categories = [
        {"supercategory": "thing", "id": c, "name": n} for c, n in COCO_CATEGORIES.items()
    ]
    return {
        "info": {"description": "COCO-2014-scale benchmark file (no images)"},
        "images": images,
        "licenses": [{"id": 1, "name": "benchmark"}],
        "annotations": annotations,
        "categories": categories,
    }


def write_coco_scale(root: Path, per_image: int = 1) -> None:
    """Write `root/annotations/instances_{train2014,val2014}.json` at COCO 2014's image
    counts (no image files), every image listed (`coco_scale_annotations`)."""
    folder = Path(root) / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    for split, num_images in COCO_2014_SPLITS.items():
        data = coco_scale_annotations(split, num_images, per_image)
        path = folder / f"instances_{split}.json"
        path.write_text(json.dumps(data, separators=(",", ":")))


def timed(call, repeats: int) -> float:
    """Median wall seconds of `call()` over `repeats` runs."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


REPO = Path(__file__).resolve().parents[1]


def dry_run(workdir: Path) -> tuple[float, int]:
    """Wall seconds of one `snakemake -n --quiet rules` in `workdir`, and the jobs planned."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--cores", "2", "-n", "--quiet", "rules"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    total = re.search(r"^total\s+(\d+)", proc.stdout, flags=re.M)
    return seconds, int(total.group(1)) if total else 0


def write_coco_config(workdir: Path, root: Path) -> None:
    """`workdir/config.yaml` for the COCO-2014-scale dataset at `root` (shard size 128)."""
    config = {
        "output_dir": "results",
        "device": "cpu",
        "dataset": {"kind": "coco", "root": str(root), "train_split": "train2014",
                    "val_split": None, "eval_splits": ["val2014"], "shard_size": 128},
    }  # fmt: skip
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def dag_table(root: Path, workdir: Path) -> None:
    """Time the dry run of a COCO-2014-scale dataset, first without then with the caches."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_coco_config(workdir, root)
    print("\n| dry run | seconds | jobs |\n|---|---:|---:|")
    for what in ("first (parses both files, writes the caches)", "second (caches)"):
        seconds, jobs = dry_run(workdir)
        print(f"| {what} | {seconds:.1f} | {jobs:,} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per timing (median)")
    parser.add_argument(
        "--annotations-per-image", type=int, default=1, help="tiny polygons per image"
    )
    parser.add_argument("--dag", action="store_true", help="also time a Snakemake dry run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_coco_") as tmp:
        root = Path(tmp) / "coco"
        start = time.perf_counter()
        write_coco_scale(root, args.annotations_per_image)
        print(f"wrote the annotation files in {time.perf_counter() - start:.1f} s\n")
        print(
            "| split | images | annotations | file MB | split_listing s "
            "| cached, first call s | cached, reused s | cache MB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for split, num_images in COCO_2014_SPLITS.items():
            source = root / coco.ANNOTATIONS_PATTERN.format(split=split)
            cache = Path(tmp) / "cache" / f"{split}.json"
            names, has_masks, _ = coco.split_listing(source)
            assert len(names) == num_images and has_masks
            parse = timed(lambda source=source: coco.split_listing(source), args.repeats)

            def first_call(source=source, cache=cache) -> None:
                cache.unlink(missing_ok=True)
                coco.cached_split_listing(source, cache)

            first = timed(first_call, args.repeats)
            reused = timed(
                lambda source=source, cache=cache: coco.cached_split_listing(source, cache),
                args.repeats,
            )
            print(
                f"| {split} | {num_images:,} | {num_images * args.annotations_per_image:,} "
                f"| {source.stat().st_size / 1e6:.1f} | {parse:.2f} | {first:.2f} "
                f"| {reused:.3f} | {cache.stat().st_size / 1e6:.1f} |"
            )
        if args.dag:
            dag_table(root, Path(tmp) / "work")


if __name__ == "__main__":
    main()
