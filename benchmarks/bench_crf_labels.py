"""Benchmark: CRF-label throughput of one shard with 1 and N worker processes.

Runs the `psa crf-labels` driver (`psa_core.stages.affinity.crf_labels`: two
dense CRFs an image, label-map PNGs, the HDF5 shard) on the same CAM shard
with `--workers 1` and `--workers N`, side by side in one run, checks the two
outputs agree, and prints a markdown table for benchmarks/RESULTS.md.

    python benchmarks/bench_crf_labels.py --run results --split train --shard 000 --workers 2

`--run` is the output_dir of a finished workflow run (it needs
`cam/<split>/shard-<shard>.h5` and the index of the split).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from psa_core import io
from psa_core.settings import CrfSettings
from psa_core.stages.affinity import crf_labels
from psa_core.stages.common import LabelledImages


def run_once(run: Path, root: Path, split: str, shard: str, workers: int, out: Path) -> float:
    """One `crf_labels` call; returns its wall time in seconds."""
    start = time.perf_counter()
    index = run / "index" / split
    crf_labels(
        data=LabelledImages(root=root, images=index / "images.txt", labels=index / "labels.json"),
        cams=run / "cam" / split / f"shard-{shard}.h5",
        crf=CrfSettings(workers=workers),  # the published values
        out=out / f"w{workers}.h5",
        out_maps=out / f"w{workers}-maps",
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("results"), help="workflow output_dir")
    parser.add_argument("--root", type=Path, default=None, help="dataset (default: run/synthetic)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--shard", default="000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = args.root or args.run / "synthetic"
    n = len(io.read_score_shard_names(args.run / "cam" / args.split / f"shard-{args.shard}.h5"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        best = {}
        for workers in (1, args.workers):
            times = [
                run_once(args.run, root, args.split, args.shard, workers, out)
                for _ in range(args.repeats)
            ]
            best[workers] = min(times)
        one, many = (io.read_score_shard(out / f"w{w}.h5")[0] for w in (1, args.workers))
        assert one.keys() == many.keys()
        same = all(np.array_equal(one[k][0], many[k][0]) for k in one)
    rate = {w: n / t for w, t in best.items()}
    print(
        f"\n`python benchmarks/bench_crf_labels.py --run {args.run} --split {args.split} "
        f"--shard {args.shard} --workers {args.workers} --repeats {args.repeats}` on "
        f"{platform.machine()} ({os.cpu_count()} CPUs), {datetime.date.today()}:\n"
    )
    print(f"| workers | images | best of {args.repeats} | images/s | speed-up | outputs equal |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for w in best:
        print(
            f"| {w} | {n} | {best[w]:.2f} s | {rate[w]:.2f} | {rate[w] / rate[1]:.2f}× | "
            f"{'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
