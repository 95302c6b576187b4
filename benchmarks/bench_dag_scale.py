"""Benchmark: how long Snakemake takes to build the DAG of a VOC-sized dataset.

Builds dataset folders in the VOC layout that hold only the image lists
(`ImageSets/Segmentation/{train_aug,train,val}.txt` with made-up names; no
pixels, no JPEGs: the DAG needs only the lists, because `split_size` in
workflow/rules/common.smk counts the names of each list, `index_split` takes
its list file as input and `index_shard` its shard's names as a param),
writes a config per (dataset fraction, shard size)
and times `snakemake -n --quiet rules` (and, with `--full`, a plain `-n` that
prints every job) on the repository's Snakefile. Prints a markdown table for
benchmarks/RESULTS.md.

    python benchmarks/bench_dag_scale.py
    python benchmarks/bench_dag_scale.py --fractions 1.0 --shard-sizes 32 --repeats 3 --full

Snakemake's own start-up (imports, executor plugins: the SLURM plugin alone
asks `scontrol` for the cluster's configuration when it is imported) is timed
on a one-rule Snakefile and shown apart, so that the DAG column is the
workflow's own cost.

`--profile FILE` also writes a cProfile of one dry run (the largest dataset,
the smallest shard size) for `python -m pstats FILE`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

VOC_SPLIT_SIZES = {"train_aug": 10_582, "train": 1_464, "val": 1_449}
"""Images per list of PASCAL VOC 2012 with SBD (train is a subset of train_aug)."""

LIST_DIR = Path("ImageSets", "Segmentation")


def write_lists(root: Path, fraction: float) -> dict[str, int]:
    """The three VOC lists, `fraction` of their size, names only; returns the sizes.

    As in VOC, `train` is the first part of `train_aug` and `val` is disjoint
    from both.
    """
    sizes = {split: max(1, round(n * fraction)) for split, n in VOC_SPLIT_SIZES.items()}
    train_aug = [f"2008_{i:06d}" for i in range(sizes["train_aug"])]
    lists = {
        "train_aug": train_aug,
        "train": train_aug[: sizes["train"]],
        "val": [f"2011_{i:06d}" for i in range(sizes["val"])],
    }
    folder = root / LIST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (folder / f"{split}.txt").write_text("\n".join(names) + "\n")
    return sizes


def write_config(workdir: Path, root: Path, shard_size: int) -> None:
    """A config with the published splits; every other key takes its schema default."""
    config = {
        "output_dir": "results",
        "device": "cpu",
        "dataset": {
            "kind": "voc",
            "root": str(root),
            "classes": None,
            "train_split": "train_aug",
            "val_split": "val",
            "eval_splits": ["train", "val"],
            "shard_size": shard_size,
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


STARTUP_SNAKEFILE = 'rule all:\n    output: "done"\n    shell: "touch {output}"\n'
"""A one-job workflow: its dry run times Snakemake's start-up alone."""


def snakemake_command(workdir: Path, *args: str, snakefile: Path = REPO / "Snakefile") -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]


def dry_run(workdir: Path, full: bool, snakefile: Path = REPO / "Snakefile") -> tuple[float, int]:
    """Wall seconds of one dry run and the number of jobs it plans."""
    args = ["-n"] if full else ["-n", "--quiet", "rules"]
    start = time.perf_counter()
    proc = subprocess.run(
        snakemake_command(workdir, *args, snakefile=snakefile),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} in {workdir} failed:\n{proc.stderr[-3000:]}")
    totals = re.findall(r"^total\s+(\d+)\s*$", proc.stdout + proc.stderr, flags=re.M)
    if not totals:
        raise SystemExit(f"no job count in the output of snakemake {' '.join(args)}")
    return seconds, int(totals[0])


def profile(workdir: Path, out: Path) -> None:
    """cProfile of one `snakemake -n --quiet rules` into `out`."""
    cmd = snakemake_command(workdir, "-n", "--quiet", "rules")
    cmd[1:3] = ["-m", "cProfile", "-o", str(out), "-m", "snakemake"]
    subprocess.run(cmd, capture_output=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--full", action="store_true", help="also time a plain -n (prints every job)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        snakefile = tmp / "startup" / "Snakefile"
        snakefile.parent.mkdir()
        snakefile.write_text(STARTUP_SNAKEFILE)
        startup = min(
            dry_run(snakefile.parent, full=False, snakefile=snakefile)[0]
            for _ in range(args.repeats)
        )
        print(f"Snakemake start-up: {startup:.1f} s", file=sys.stderr, flush=True)
        for fraction in args.fractions:
            root = tmp / f"voc-{fraction:g}"
            sizes = write_lists(root, fraction)
            for shard_size in args.shard_sizes:
                workdir = tmp / f"run-{fraction:g}-{shard_size}"
                write_config(workdir, root, shard_size)
                runs = [dry_run(workdir, full=False) for _ in range(args.repeats)]
                jobs = runs[0][1]
                quiet = [seconds for seconds, _ in runs]
                full = (
                    [dry_run(workdir, full=True)[0] for _ in range(args.repeats)]
                    if args.full
                    else []
                )
                rows.append((fraction, sizes, shard_size, jobs, quiet, full))
                print(
                    f"{fraction:g} x VOC, shard size {shard_size}: {jobs} jobs, "
                    f"-n --quiet {min(quiet):.1f} s" + (f", -n {min(full):.1f} s" if full else ""),
                    file=sys.stderr,
                    flush=True,
                )
        if args.profile:
            fraction, shard_size = max(args.fractions), min(args.shard_sizes)
            profile(tmp / f"run-{fraction:g}-{shard_size}", args.profile)
            print(f"profile of {fraction:g} x VOC, shard size {shard_size}: {args.profile}")

    command = "python benchmarks/bench_dag_scale.py " + " ".join(sys.argv[1:])
    print(
        f"\n`{command.strip()}` ({datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; seconds: min (median) of "
        f"{args.repeats} runs; Snakemake's start-up, {startup:.1f} s here (the dry run of a "
        "one-rule Snakefile), is in the `-n` columns and taken off in the last)\n"
    )
    header = (
        "| VOC fraction | images train_aug / train / val | shard size | jobs | `-n --quiet` s |"
    )
    rule = "| --- | --- | --- | --- | --- |"
    if args.full:
        header += " `-n` s |"
        rule += " --- |"
    header += " DAG s (`-n --quiet` minus start-up) |"
    rule += " --- |"
    print(header)
    print(rule)
    for fraction, sizes, shard_size, jobs, quiet, full in rows:
        images = " / ".join(f"{sizes[s]:,}" for s in VOC_SPLIT_SIZES)
        line = (
            f"| {fraction:g} | {images} | {shard_size} | {jobs:,} | "
            f"{min(quiet):.1f} ({statistics.median(quiet):.1f}) |"
        )
        if full:
            line += f" {min(full):.1f} ({statistics.median(full):.1f}) |"
        line += f" {min(quiet) - startup:.1f} |"
        print(line)


if __name__ == "__main__":
    main()
