"""Robustness suite (issue 17): the whole pipeline on independent dataset families.

For each family: generate its dataset (benchmarks/families) into
WORKDIR/FAMILY/data, write WORKDIR/FAMILY/config.yaml (the committed
config.yaml with only `output_dir` and, for the generated families, the
`dataset` section changed, plus any --config-override), run Snakemake there on
2 cores (timed) and print a markdown table per family (CAM, CRF labels, random
walk, segmentation network on train and val), the per-class CAM IoU and the two
acceptance checks: RW train (configured alpha) >= CAM best train + 5 points,
and seg val >= RW val - 3 points. Family `demo` is the built-in synthetic
dataset with the committed config as it is.

    python benchmarks/robustness.py --families texture shapes hue demo --workdir /tmp/psa-robustness
    python benchmarks/robustness.py --workdir /tmp/psa-robustness --tables-only
    python benchmarks/robustness.py --families texture --stop-after cam \\
        --config-override cam.yaml --workdir /tmp/psa-rb-cam

--family-set NAME=VALUE (one generated family) changes a constant of its generator, a
variant for one measurement, e.g. --families texture --family-set "DIAMETER=[0.3, 0.6]".

Each family's folder is cleared first, so the wall time is that of a full run;
--keep reuses what is there instead (the dataset when family and seed match,
and Snakemake's finished jobs). The exit status is 1 when a Snakemake run failed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `families`, also under python -m

from families import FAMILIES, set_constants  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = "demo"
ALL_FAMILIES = (*FAMILIES, DEMO)
DEFAULT_WORKDIR = Path("/tmp/psa-robustness")
OUTPUT_DIR = "results"
DATA_DIR = "data"
CORES = 2
RW_GAIN = 5.0
"""Points of mIoU the random walk must add on train over the best CAM threshold."""
SEG_TOLERANCE = 3.0
"""Points of mIoU the segmentation network may lose on val against the random walk."""
STOP_AFTER = ("cam", "rw")
LOG_TAIL_LINES = 30

DATASET = {
    "kind": "voc",
    "root": DATA_DIR,
    "train_split": "train",
    "val_split": "val",
    "eval_splits": ["train", "val"],
}
"""The `dataset` keys a generated family sets (classes come from data/classes.txt)."""


# -- configuration -----------------------------------------------------------


def committed_config() -> dict[str, Any]:
    """The repository's config.yaml as committed (HEAD), else the working copy."""
    try:
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", "HEAD:config.yaml"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"note: no git HEAD; using the working copy {REPO / 'config.yaml'}", file=sys.stderr)
        text = (REPO / "config.yaml").read_text()
    return yaml.safe_load(text)


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, mappings key by key (neither is changed)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def family_config(
    base: dict[str, Any], family: str, override: dict[str, Any] | None
) -> dict[str, Any]:
    """The config of one family's run: `base` with output_dir (and dataset) set, then `override`."""
    changes: dict[str, Any] = {"output_dir": OUTPUT_DIR}
    if family != DEMO:
        changes["dataset"] = DATASET
    return merged(merged(base, changes), override or {})


def read_override(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        override = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        sys.exit(f"--config-override {path}: cannot read it as YAML ({exc}); fix the file")
    if override is None:
        return {}
    if not isinstance(override, dict):
        sys.exit(f"--config-override {path}: expected a mapping of config keys; fix the file")
    return override


# -- running -----------------------------------------------------------------


def targets(config: dict[str, Any], stop_after: str | None) -> list[str]:
    """Snakemake targets: none (the default `all`) or the evaluations of the eval splits
    by the last stage run (`cam` or `rw`, the random walk; CRF labels come with it)."""
    if stop_after is None:
        return []
    splits = config["dataset"].get("eval_splits") or ["train", "val"]
    stages = ("cam",) if stop_after == "cam" else ("cam", "crf", "rw")
    return [
        f"{config['output_dir']}/{stage}/eval/{split}.json" for stage in stages for split in splits
    ]


def prepare_data(
    family: str,
    folder: Path,
    seed: int,
    num_train: int | None = None,
    constants: dict[str, Any] | None = None,
) -> float | None:
    """Generate the family's dataset into folder/data unless the same one is there
    (`num_train` training images, None for the family's own count; `constants`, those
    set by --family-set); returns the seconds it took (None when reused or for `demo`)."""
    if family == DEMO:
        return None
    marker = folder / "dataset.json"
    wanted = {"family": family, "seed": seed, "num_train": num_train}
    if constants:
        wanted["constants"] = constants
    data = folder / DATA_DIR
    if (
        data.is_dir()
        and marker.is_file()
        and {"num_train": None, **json.loads(marker.read_text())} == wanted
    ):
        return None
    start = time.perf_counter()
    sizes = {} if num_train is None else {"num_train": num_train}
    FAMILIES[family](folder / DATA_DIR, seed, **sizes)
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps(wanted) + "\n")
    return seconds


def run_family(
    family: str,
    workdir: Path,
    base: dict[str, Any],
    override: dict[str, Any] | None,
    seed: int,
    stop_after: str | None,
    keep: bool,
    cores: int,
    num_train: int | None = None,
    constants: dict[str, Any] | None = None,
) -> int:
    """Prepare and run one family; writes folder/run.json (wall time, exit status)."""
    folder = workdir / family
    if folder.exists() and not keep:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generation = prepare_data(family, folder, seed, num_train, constants)
    if generation is not None:
        print(f"[{family}] dataset generated in {generation:.1f} s: {folder / DATA_DIR}")
    config = family_config(base, family, override)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(folder),
        "--cores",
        str(cores),
        *targets(config, stop_after),
    ]
    log = folder / "snakemake.log"
    print(f"[{family}] {' '.join(command)}\n[{family}] log: {log}", flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        returncode = subprocess.run(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    wall = time.perf_counter() - start
    record = {
        "family": family,
        "seed": seed,
        "num_train": num_train,
        "family_set": constants or {},
        "stop_after": stop_after,
        "wall_s": round(wall, 1),
        "returncode": returncode,
        "generation_s": None if generation is None else round(generation, 1),
        "cores": cores,
        "command": command,
    }
    (folder / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    if returncode:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        print(f"[{family}] Snakemake failed (exit {returncode}); last lines of {log}:")
        print("\n".join(f"    {line}" for line in tail))
    return returncode


# -- tables ------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _points(miou: float | None) -> str:
    return "—" if miou is None else f"{100 * miou:.1f}"


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _setting_value(setting: str) -> str:
    """The number at the end of a summary `setting` ("bg threshold 0.2", "alpha 16")."""
    return setting.split()[-1] if setting else "?"


def split_results(rows: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """One split's numbers from summary.json rows (see psa_core.evaluate.summary_rows)."""
    out: dict[str, Any] = {}
    for row in rows:
        if row.get("split") != split:
            continue
        stage, note, miou = row.get("stage"), row.get("note") or "", row.get("miou")
        best = note.startswith("best")
        value = _setting_value(row.get("setting") or "")
        if stage == "CAM":
            out["cam_best" if best else "cam"] = (miou, value)
        elif stage == "random walk":
            out["rw_best" if best else "rw"] = (miou, value)
        elif stage == "CRF labels":
            found = re.search(r"([\d.]+%) of pixels left uncertain", note)
            out["crf"] = (miou, found.group(1) if found else "n/a")
        elif stage == "segmentation network":
            out["seg"] = (miou, "")
    return out


def _miou(results: dict[str, Any], key: str) -> float | None:
    return results.get(key, (None, ""))[0]


def cam_table(results_dir: Path, splits: list[str]) -> list[str]:
    """CAM mIoU at the configured and best threshold and per-class IoU at the configured one."""
    lines: list[str] = []
    for split in splits:
        cam = _read_json(results_dir / "cam" / "eval" / f"{split}.json")
        if cam is None:
            lines.append(f"| {split} | no {results_dir / 'cam/eval' / f'{split}.json'} |")
            continue
        names = cam.get("class_names") or [f"class {i}" for i in range(cam["num_classes"])]
        threshold = _number(cam["published_threshold"])
        at = next(
            (r for r in cam["thresholds"] if r["threshold"] == cam["published_threshold"]), None
        )
        per_class = at["per_class_iou"] if at else [None] * len(names)
        if not lines:
            lines += [
                f"| split | CAM @{threshold} | CAM best (thr) | "
                + " | ".join(f"{n} @{threshold}" for n in names)
                + " |",
                "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " |",
            ]
        lines.append(
            f"| {split} | {_points(cam['published_miou'])} | "
            f"{_points(cam['best_miou'])} ({_number(cam['best_threshold'])}) | "
            + " | ".join(_points(v) for v in per_class)
            + " |"
        )
    return lines


def walk_table(results_dir: Path, splits: list[str]) -> list[str]:
    """A run stopped after the walk: CAM best, CRF labels and the walk per split, from the
    stages' evaluation files (the summary comes only with the whole DAG)."""
    lines = [
        "| split | CAM best (thr) | CRF labels (uncertain %) | random walk (alpha) | "
        "RW best (alpha) | RW - CAM best |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for split in splits:
        cam, crf, rw = (
            _read_json(results_dir / stage / "eval" / f"{split}.json")
            for stage in ("cam", "crf", "rw")
        )
        if cam is None or crf is None or rw is None:
            lines.append(f"| {split} | missing evaluation files in {results_dir} |")
            continue
        gain = 100 * (rw["published_miou"] - cam["best_miou"])
        lines.append(
            f"| {split} | {_points(cam['best_miou'])} ({_number(cam['best_threshold'])}) | "
            f"{_points(crf['miou'])} ({100 * crf['uncertain_fraction']:.1f} %) | "
            f"{_points(rw['published_miou'])} ({_number(rw['published_value'])}) | "
            f"{_points(rw['best_miou'])} ({_number(rw['best_value'])}) | {gain:+.1f} |"
        )
    return lines


def summary_table(rows: list[dict[str, Any]], splits: list[str]) -> list[str]:
    """The markdown table of the brief: one row per split, one column per stage."""
    results = {split: split_results(rows, split) for split in splits}
    first = next(iter(results.values()), {})
    cam_thr = first.get("cam", (None, "0.2"))[1]
    alpha = first.get("rw", (None, "?"))[1]
    lines = [
        f"| split | CAM @{cam_thr} | CAM best (thr) | CRF labels (labelled px, uncertain %) | "
        f"random walk (alpha {alpha}) | RW best (alpha) | segmentation network |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for split, r in results.items():
        cam_best, thr = r.get("cam_best", (None, "?"))
        crf, uncertain = r.get("crf", (None, "n/a"))
        rw_best, best_alpha = r.get("rw_best", (None, "?"))
        lines.append(
            f"| {split} | {_points(_miou(r, 'cam'))} | {_points(cam_best)} ({thr}) | "
            f"{_points(crf)} ({uncertain}) | {_points(_miou(r, 'rw'))} | "
            f"{_points(rw_best)} ({best_alpha}) | {_points(_miou(r, 'seg'))} |"
        )
    return lines


def acceptance(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The two checks: (description, PASS / FAIL / n/a)."""
    train, val = split_results(rows, "train"), split_results(rows, "val")
    checks = []
    rw, cam_best = _miou(train, "rw"), _miou(train, "cam_best")
    if rw is None or cam_best is None:
        checks.append((f"RW train >= CAM best train + {RW_GAIN:g}", "n/a"))
    else:
        ok = 100 * rw >= 100 * cam_best + RW_GAIN
        checks.append(
            (
                f"RW train {_points(rw)} >= CAM best train {_points(cam_best)} + {RW_GAIN:g}",
                "PASS" if ok else "FAIL",
            )
        )
    seg, rw_val = _miou(val, "seg"), _miou(val, "rw")
    if seg is None or rw_val is None:
        checks.append((f"seg val >= RW val - {SEG_TOLERANCE:g}", "n/a"))
    else:
        ok = 100 * seg >= 100 * rw_val - SEG_TOLERANCE
        checks.append(
            (
                f"seg val {_points(seg)} >= RW val {_points(rw_val)} - {SEG_TOLERANCE:g}",
                "PASS" if ok else "FAIL",
            )
        )
    return checks


def report_family(family: str, workdir: Path) -> list[str]:
    """Print a family's tables from its finished folder; returns its check verdicts."""
    folder = workdir / family
    print(f"\n## {family}\n")
    if not folder.is_dir():
        print(f"no run in {folder}")
        return []
    run = _read_json(folder / "run.json") or {}
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    results_dir = folder / config.get("output_dir", OUTPUT_DIR)
    splits = list(config.get("dataset", {}).get("eval_splits") or ["train", "val"])
    wall = run.get("wall_s")
    status = run.get("returncode")
    data = "built-in synthetic" if family == DEMO else str(folder / DATA_DIR)
    size = f"; {run['num_train']} train images" if run.get("num_train") else ""
    if run.get("family_set"):
        size += "; generator constants " + ", ".join(
            f"{name}={value}" for name, value in run["family_set"].items()
        )
    print(f"data: {data}; seed {run.get('seed', '?')}{size}")
    if run.get("generation_s") is not None:
        print(f"generation: {run['generation_s']} s")
    stage = f"up to {run['stop_after']}" if run.get("stop_after") else "full DAG"
    cores = run.get("cores", CORES)
    ran = f"{wall} s wall, exit {status}" if wall is not None else "not run"
    print(f"Snakemake ({stage}, {cores} cores): {ran}\n")
    summary = _read_json(results_dir / "summary.json")
    if summary is not None and not run.get("stop_after"):
        print("\n".join(summary_table(summary, splits)))
        print()
    if run.get("stop_after") == "rw":
        print("\n".join(walk_table(results_dir, splits)))
        print()
    print("CAM IoU per class:\n")
    print("\n".join(cam_table(results_dir, splits)))
    if summary is None or run.get("stop_after"):
        return []
    print()
    verdicts = []
    for text, verdict in acceptance(summary):
        print(f"- {text}: **{verdict}**")
        verdicts.append(verdict)
    return verdicts


# -- command line -------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=ALL_FAMILIES,
        default=list(ALL_FAMILIES),
        help="families to run (default: all)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"one folder per family under it, outside the checkout (default {DEFAULT_WORKDIR})",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="reuse what a family's folder holds (dataset, finished jobs) instead of clearing it",
    )
    parser.add_argument(
        "--config-override",
        type=Path,
        default=None,
        metavar="YAML",
        help="config keys merged over every family's config (for experiments)",
    )
    parser.add_argument(
        "--stop-after",
        choices=STOP_AFTER,
        default=None,
        help="run only up to the CAM evaluation (cam) or the walk's (rw: CAM, CRF labels and "
        "walk evaluated, no segmentation network)",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="only print the tables of finished family folders (runs nothing)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated datasets")
    parser.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="training images of the generated families (default: each family's own)",
    )
    parser.add_argument("--cores", type=int, default=CORES, help=f"Snakemake --cores ({CORES})")
    parser.add_argument(
        "--family-set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="a module constant of the (one) generated family, e.g. 'DIAMETER=[0.3, 0.6]': "
        "a variant of it, for one measurement",
    )
    args = parser.parse_args(argv)
    if args.family_set and (len(args.families) != 1 or args.families[0] == DEMO):
        parser.error("--family-set goes with one generated family (--families NAME)")
    constants = set_constants(args.families[0], args.family_set) if args.family_set else None

    workdir = args.workdir.resolve()
    if workdir == REPO or workdir.is_relative_to(REPO) or REPO.is_relative_to(workdir):
        parser.error(f"--workdir {workdir}: give a folder outside the checkout {REPO}")
    failed = []
    if not args.tables_only:
        base = committed_config()
        override = read_override(args.config_override)
        for family in args.families:
            code = run_family(
                family,
                workdir,
                base,
                override,
                args.seed,
                args.stop_after,
                args.keep,
                args.cores,
                args.num_train,
                constants,
            )
            if code:
                failed.append(family)
    verdicts = {family: report_family(family, workdir) for family in args.families}
    print("\n## checks\n")
    print(
        f"| family | wall (s) | RW train >= CAM best + {RW_GAIN:g} "
        f"| seg val >= RW val - {SEG_TOLERANCE:g} |"
    )
    print("| --- | ---: | --- | --- |")
    for family, checks in verdicts.items():
        run = _read_json(workdir / family / "run.json") or {}
        cells = (checks + ["n/a", "n/a"])[:2]
        print(f"| {family} | {run.get('wall_s', '—')} | {cells[0]} | {cells[1]} |")
    if failed:
        print(f"\nSnakemake failed for: {', '.join(failed)} (see WORKDIR/FAMILY/snakemake.log)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
