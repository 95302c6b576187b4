"""Bad inputs and faults (issue 15): each run as a user would, its outcome classified.

    python benchmarks/bad_inputs.py              # every case; writes docs/bad_inputs.md
    python benchmarks/bad_inputs.py --only crf   # the cases whose group or name holds "crf"
    python benchmarks/bad_inputs.py --keep       # keep the temp folder to look at

Everything is built in a temp folder: a tiny synthetic dataset (`psa synth`),
its index, a CAM network and a segmentation model folder trained for one
epoch on the `tiny` backbone, fake CAMs for the CRF cases. Each case then
runs `python -m psa_core ...` (or `python -m snakemake --snakefile
<repo>/Snakefile --directory <case folder> --cores 2 ...` for config cases) in
a subprocess, as a user would, and its outcome is classified:

- the exit code, and whether the output holds a Python traceback;
- for a user's mistake: whether the tool refused it in one line that names
  the file, line or key at fault (each case lists the words that must appear);
- for a valid input: whether it was accepted and the result is right (the
  decoded pixel values, the names read);
- whether data was lost: the inputs, and for failed or killed jobs the
  finished artifacts, are hashed before and after;
- faults (signals, kill -9, a full disk, two trainings at once) check what
  the design promises: nothing that looks finished, a rerun that resumes.

Config cases use a dry run (`-n`): a careful workflow refuses a bad config
before it plans a job. The output_dir with shell metacharacters runs real
jobs. A case that needs what this machine lacks (root, a tool) is reported
as skipped, with the reason. Exit status: 1 when any case is FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.workflow.conftest import TINY_CONFIG  # noqa: E402

TRACEBACK = "Traceback (most recent call last)"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Fault)\b")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
SMK_NOISE = re.compile(
    r"^(Building DAG of jobs|Assuming unrestricted|host: |Using shell|Provided cores|"
    r"Rules claiming|Select jobs|Execute \d|Job stats|job\s+count|-{3,}|total\s+\d|"
    r"Complete log|Nothing to be done|Shutting down|Exiting because|Will exit after|"
    r"Removing output files|Storing output|Conda environments|\w+\s+\d+$)"
)
TIMEOUT_S = 300
TRAIN_ARGS = tuple(
    shlex.split(
        "--backbone tiny --batch-size 4 --crop-size 48 --resize-long 48 64 --lr 0.01 "
        "--device cpu --threads 1"
    )
)
"""The options of every training: the tiny backbone on 48-64 px images, on the CPU."""
TRAIN = [f"syn_{i:06d}" for i in range(8)]
"""The training split of the synthetic dataset (`psa synth --num-train 8`)."""

Needle = str | tuple[str, ...]
"""A word the message must hold; a tuple: any one of them."""


# -- running commands -------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """The environment of every command: this checkout first on PYTHONPATH, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "PSA_MAX_IMAGE_PIXELS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


@dataclasses.dataclass
class Proc:
    """A finished command: exit code (None: timed out), output, wall time."""

    tool: str  # "psa" or "smk"
    rc: int | None
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return f"{self.out}\n{self.err}"


def run(
    tool: str, argv: Sequence[str], *, cwd: Path | None = None, env: dict | None = None
) -> Proc:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=env or base_env(),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT_S,
        )
        return Proc(tool, done.returncode, done.stdout, done.stderr, time.perf_counter() - start)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return Proc(tool, None, out, err, time.perf_counter() - start)


def psa_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "psa_core", *map(str, args)]


def psa(*args: object, env: dict | None = None, cwd: Path | None = None) -> Proc:
    return run("psa", psa_argv(*args), env=env, cwd=cwd)


def smk(workdir: Path, *args: object) -> Proc:
    argv = [sys.executable, "-m", "snakemake", "--snakefile", REPO / "Snakefile"]
    argv += ["--directory", workdir, "--cores", "2", *args]
    return run("smk", argv, cwd=workdir)


class Background:
    """A `psa` command started in the background, its stderr collected in a file."""

    def __init__(self, folder: Path, tag: str, *args: object) -> None:
        self.err_path = folder / f"{tag}.stderr"
        self._err = open(self.err_path, "w")  # noqa: SIM115 (closed in wait)
        self.start = time.perf_counter()
        self.popen = subprocess.Popen(
            psa_argv(*args), stdout=subprocess.DEVNULL, stderr=self._err, env=base_env()
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout: float = TIMEOUT_S) -> Proc:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            rc = None
        self._err.close()
        err = self.err_path.read_text(errors="replace")
        return Proc("psa", rc, "", err, time.perf_counter() - self.start)


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.002) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(poll)
    return False


# -- reading outcomes ----------------------------------------------------------------


def has_traceback(proc: Proc) -> bool:
    return TRACEBACK in proc.text


def error_lines(proc: Proc) -> list[str]:
    """The lines a user reads as the error: no log lines, no usage, no Snakemake banner."""
    text = proc.err if proc.tool == "psa" else proc.text
    lines = []
    for line in text.splitlines():
        if not line.strip() or LOG_LINE.match(line):
            continue
        if proc.tool == "psa" and (
            line.startswith((" ", "\t", "usage:")) or re.search(r"\w+Warning: ", line)
        ):
            continue
        if proc.tool == "smk" and SMK_NOISE.match(line.strip()):
            continue
        lines.append(line.strip())
    return lines


def message(proc: Proc) -> str:
    """The first line of the error message (a traceback: its last line, the exception)."""
    lines = error_lines(proc)
    if has_traceback(proc):  # the last exception line, e.g. "RuntimeError: ..."
        raised = [line for line in proc.text.splitlines() if EXCEPTION_LINE.match(line)]
        return raised[-1].strip() if raised else "traceback"
    if proc.tool == "psa":
        own = [line for line in lines if re.match(r"psa [\w-]+: ", line)]
        if own:
            return own[0]
    if not lines:
        return ""
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return first


def needle_text(needles: Iterable[Needle]) -> str:
    """The needles in words: `a and b or c` for ["a", ("b", "c")]."""
    return " and ".join(n if isinstance(n, str) else " or ".join(n) for n in needles)


def names_all(text: str, needles: Iterable[Needle]) -> str | None:
    """The first needle the text lacks (shown as alternatives), or None."""
    for needle in needles:
        options = (needle,) if isinstance(needle, str) else needle
        if not any(option in text for option in options):
            return " or ".join(repr(o) for o in options)
    return None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(paths: Iterable[Path]) -> dict[str, str]:
    found = {}
    for path in paths:
        if path.is_file():
            found[str(path)] = sha256(path)
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and not file.is_symlink():
                    found[str(file)] = sha256(file)
    return found


class Guard:
    """Hashes of files (folders: every file in them) now, to compare after a case."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self.before = snapshot(paths)
        if not self.before:
            raise RuntimeError(f"nothing to guard in {paths}")

    def lost(self) -> list[str]:
        after = snapshot(self.paths)
        return [p for p, digest in self.before.items() if after.get(p) != digest]


def stale_temps(*folders: Path) -> list[str]:
    """Temporary files or folders (`.NAME.XXXX.tmp`, `*.partial`) left in `folders`."""
    return sorted(
        p.name
        for folder in folders
        if folder.is_dir()
        for p in folder.iterdir()
        if p.name.endswith((".tmp", ".partial"))
    )


@dataclasses.dataclass
class Outcome:
    """What a case did, and what is wrong with it (`problems` empty and nothing lost: ok)."""

    rc: int | None = None
    message: str = ""
    traceback: bool = False
    lost: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    note: str = ""
    skipped: str = ""

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        return "FAIL" if self.problems or self.traceback or self.lost else "ok"


def outcome_of(proc: Proc) -> Outcome:
    """The exit code, traceback and (for a failure) the message of a finished command."""
    shown = message(proc) if proc.rc != 0 or has_traceback(proc) else ""
    return Outcome(rc=proc.rc, message=shown, traceback=has_traceback(proc))


def check_exit(outcome: Outcome, proc: Proc) -> None:
    if proc.rc is None:
        outcome.problems.append(f"timed out after {TIMEOUT_S} s")
    if outcome.traceback:
        outcome.problems.append("traceback")


def refused(
    proc: Proc, needles: Sequence[Needle], guard: Guard | None = None, expect_rc: int | None = None
) -> Outcome:
    """A user's mistake: non-zero exit (`expect_rc` if given), no traceback, one line naming
    every needle."""
    outcome = outcome_of(proc)
    check_exit(outcome, proc)
    if proc.rc == 0:
        outcome.problems.append("accepted (exit 0)")
    elif expect_rc is not None and proc.rc != expect_rc:
        outcome.problems.append(f"exit {proc.rc}, not {expect_rc}")
    elif expect_rc is None and proc.rc is not None and (proc.rc < 0 or proc.rc >= 128):
        outcome.problems.append(f"died (exit {proc.rc})")
    if proc.rc not in (0, None) and not outcome.traceback:
        lacking = names_all(outcome.message, needles)
        if lacking:
            outcome.problems.append(f"message does not name {lacking}")
        count = len(error_lines(proc))
        if count > 1:
            outcome.problems.append(f"message is {count} lines")
    if guard is not None:
        outcome.lost = guard.lost()
    return outcome


def accepted(proc: Proc, guard: Guard | None = None, *checks: str | None) -> Outcome:
    """A valid input: exit 0, no traceback, and each check (a problem, or None) passed."""
    outcome = outcome_of(proc)
    check_exit(outcome, proc)
    if proc.rc != 0:
        outcome.problems.append(f"refused (exit {proc.rc})")
    else:
        outcome.problems += [c for c in checks if c]
    if guard is not None:
        outcome.lost = guard.lost()
    return outcome


# -- the cases ---------------------------------------------------------------------


class SetupError(Exception):
    """A shared fixture could not be made: the cases that need it fail with this."""


@dataclasses.dataclass(frozen=True)
class Case:
    group: str
    name: str
    command: str
    expected: str
    func: Callable[[World, Path], Outcome]


CASES: list[Case] = []
GROUPS = ("config", "dataset", "weights and models", "outputs and faults")


def case(group: str, name: str, command: str, expected: str) -> Callable:
    assert group in GROUPS, group

    def register(func: Callable[[World, Path], Outcome]) -> Callable[[World, Path], Outcome]:
        CASES.append(Case(group, name, command, expected, func))
        return func

    return register


def setup_psa(*args: object) -> Proc:
    proc = psa(*args)
    if proc.rc != 0:
        raise SetupError(f"psa {args[0]} exit {proc.rc}: {message(proc)[:200]}")
    return proc


class World:
    """The shared fixtures, each made once on first use (a failure is remembered)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, object] = {}

    def _once(self, key: str, make: Callable[[], object]) -> object:
        if key not in self._made:
            try:
                self._made[key] = make()
            except SetupError as exc:
                self._made[key] = exc
        value = self._made[key]
        if isinstance(value, SetupError):
            raise value
        return value

    # the tiny dataset: 8 train + 4 val images of 48-64 px, 2 classes
    def data(self) -> Path:
        def make() -> Path:
            root = self.root / "base" / "data"
            setup_psa(
                "synth",
                "--out",
                root,
                "--num-train",
                8,
                "--num-val",
                4,
                "--image-size",
                48,
                64,
                "--num-classes",
                2,
                "--seed",
                1,
            )
            return root

        return self._once("data", make)  # type: ignore[return-value]

    def index(self) -> tuple[Path, Path]:
        def make() -> tuple[Path, Path]:
            folder = self.root / "base" / "index"
            images, labels = folder / "train.txt", folder / "train.json"
            setup_psa(
                "index",
                "--root",
                self.data(),
                "--split",
                "train",
                "--out-images",
                images,
                "--out-labels",
                labels,
            )
            return images, labels

        return self._once("index", make)  # type: ignore[return-value]

    def data_args(self) -> list[object]:
        images, labels = self.index()
        return ["--root", self.data(), "--images", images, "--labels", labels]

    def cam_weights(self) -> Path:
        def make() -> Path:
            folder = self.root / "base" / "cam"
            setup_psa(
                "train-cam",
                *self.data_args(),
                "--checkpoint",
                folder / "ckpt.pt",
                "--out-log",
                folder / "log.csv",
                "--out",
                folder / "weights.pt",
                "--epochs",
                1,
                *TRAIN_ARGS,
            )
            return folder / "weights.pt"

        return self._once("cam", make)  # type: ignore[return-value]

    def seg_model(self) -> Path:
        """A model folder: the seg network trained 1 epoch on the ground-truth masks."""

        def make() -> Path:
            folder = self.root / "base" / "seg"
            _, labels = self.index()
            setup_psa(
                "train-seg",
                *self.data_args(),
                "--masks",
                self.data() / "SegmentationClass",
                "--checkpoint",
                folder / "ckpt.pt",
                "--out-log",
                folder / "log.csv",
                "--out",
                folder / "weights.pt",
                "--epochs",
                1,
                "--dilation",
                2,
                *TRAIN_ARGS,
            )
            setup_psa(
                "package-seg-model",
                "--weights",
                folder / "weights.pt",
                "--labels",
                labels,
                "--out",
                folder / "model",
                "--backbone",
                "tiny",
                "--dilation",
                2,
                "--scales",
                1.0,
            )
            return folder / "model"

        return self._once("seg", make)  # type: ignore[return-value]

    def crf_world(self) -> dict[str, Path]:
        """16 images of 192-256 px, their index and a CAM shard made from the ground truth
        (tests/affinity_helpers.py): crf-labels runs a second or two, long enough to stop."""

        def make() -> dict[str, Path]:
            base = self.root / "base" / "crf"
            root = base / "data"
            setup_psa(
                "synth",
                "--out",
                root,
                "--num-train",
                16,
                "--num-val",
                1,
                "--image-size",
                192,
                256,
                "--num-classes",
                2,
                "--seed",
                2,
            )
            images, labels = base / "train.txt", base / "train.json"
            setup_psa(
                "index",
                "--root",
                root,
                "--split",
                "train",
                "--out-images",
                images,
                "--out-labels",
                labels,
            )
            cams = base / "cams.h5"
            code = (
                "import sys, json; from pathlib import Path; "
                "from tests.affinity_helpers import cam_scores, write_cam_shard; "
                "write_cam_shard(Path(sys.argv[3]), cam_scores(Path(sys.argv[1]), Path(sys.argv[2])),"
                " json.loads(Path(sys.argv[2]).read_text())['classes'])"
            )
            proc = run("psa", [sys.executable, "-c", code, root, labels, cams], cwd=REPO)
            if proc.rc != 0:
                raise SetupError(f"fake CAM shard: {message(proc)[:200]}")
            return {"root": root, "images": images, "labels": labels, "cams": cams}

        return self._once("crf", make)  # type: ignore[return-value]

    def crf_args(self, out: Path, out_maps: Path) -> list[object]:
        w = self.crf_world()
        return [
            "crf-labels",
            "--root",
            w["root"],
            "--images",
            w["images"],
            "--labels",
            w["labels"],
            "--cams",
            w["cams"],
            "--out",
            out,
            "--out-maps",
            out_maps,
            "--iterations",
            10,
        ]

    def evil(self) -> Path:
        """A torch file whose pickle runs `touch <marker>` when loaded without weights_only.

        Checked live once (a copy with its own marker, loaded with weights_only=False),
        so a refusal below is a refusal of a real payload."""

        def make() -> Path:
            folder = self.root / "base" / "evil"
            folder.mkdir(parents=True)
            for name in ("evil.pt", "check.pt"):
                marker = folder / f"{name}.MARKER"
                code = (
                    "import os, sys, torch\n"
                    "class Evil:\n"
                    "    def __reduce__(self):\n"
                    "        return (os.system, (sys.argv[2],))\n"
                    "torch.save({'conv1.weight': Evil()}, sys.argv[1])\n"
                )
                command = f"touch {shlex.quote(str(marker))}"
                proc = run("psa", [sys.executable, "-c", code, folder / name, command])
                if proc.rc != 0:
                    raise SetupError(f"making {name}: {message(proc)}")
            check = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
            run("psa", [sys.executable, "-c", check, folder / "check.pt"])
            if not (folder / "check.pt.MARKER").exists():
                raise SetupError("the malicious pickle's payload did not run when loaded unsafely")
            return folder / "evil.pt"

        return self._once("evil", make)  # type: ignore[return-value]

    def evil_marker(self) -> Path:
        return self.evil().with_name("evil.pt.MARKER")


def copy_data(world: World, dest: Path) -> Path:
    shutil.copytree(world.data(), dest)
    return dest


def index_cmd(root: Path, d: Path, split: str = "train") -> list[object]:
    return [
        "index",
        "--root",
        root,
        "--split",
        split,
        "--out-images",
        d / "idx.txt",
        "--out-labels",
        d / "idx.json",
    ]


def list_file(root: Path, split: str = "train") -> Path:
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def index_refusal(
    world: World, d: Path, change: Callable[[Path], None], needles: Sequence[Needle], **env: str
) -> Outcome:
    """`psa index` of the train split of a copy of the dataset that `change` spoiled."""
    root = copy_data(world, d / "data")
    change(root)
    guard = Guard(root)
    return refused(psa(*index_cmd(root, d), env=base_env(**env)), needles, guard)


# -- config ----------------------------------------------------------------------------


def tiny_config(**changes: object) -> dict:
    """TINY_CONFIG with `changes` (dotted keys) applied."""
    config = copy.deepcopy(TINY_CONFIG)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    return config


def voc_config(world: World, d: Path, **dataset: object) -> dict:
    root = copy_data(world, d / "data")
    config = tiny_config()
    config["dataset"] = {
        "kind": "voc",
        "root": str(root),
        "classes": None,
        "train_split": "train",
        "val_split": None,
        "eval_splits": ["train", "val"],
        "shard_size": 4,
        **dataset,
    }
    return config


def dry_run_refusal(
    d: Path, config: dict | str, needles: Sequence[Needle], *args: object, guard: Path | None = None
) -> Outcome:
    """`snakemake -n` in `d` with `config` (a mapping, or config.yaml's text)."""
    path = d / "config.yaml"
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
    watched = Guard(path, *([guard] if guard else []))
    return refused(smk(d, "-n", *args), needles, watched)


def _config_case(name: str, changes: dict, needles: Sequence[Needle], expected: str = "") -> None:
    shown = "; ".join(f"{k}: {json.dumps(v)}" for k, v in changes.items())

    @case(
        "config",
        f"{name}: `{shown}`",
        "snakemake -n",
        expected or f"one line naming {needle_text(needles)}",
    )
    def _(world: World, d: Path) -> Outcome:
        return dry_run_refusal(d, tiny_config(**changes), needles)


_config_case("unknown top-level key", {"colour": "red"}, ["colour"])
_config_case("unknown key in a section (typo)", {"cam.epoch": 3}, ["cam", "'epoch'"])
_config_case("wrong type", {"cam.epochs": "three"}, ["cam.epochs"])
_config_case("wrong type of a section", {"crf": 5}, [("'crf'", "crf:")])
_config_case("out-of-range value", {"cam.lr": -0.1}, ["cam.lr"])
_config_case("out-of-range shard size", {"dataset.shard_size": 0}, ["shard_size"])
_config_case("unknown device", {"device": "gpu"}, ["device"])
_config_case(
    "ordered pair reversed",
    {"segmentation.resize_long": [160, 96]},
    ["segmentation", "resize_long"],
)
_config_case("ordered pair reversed", {"cam.resize_long": [64, 48]}, ["cam", "resize_long"])
_config_case("ordered pair reversed", {"synthetic.image_size": [64, 48]}, ["image_size"])
_config_case(
    "alpha_low above alpha_high", {"crf.alpha_low": 40, "crf.alpha_high": 32}, ["alpha_low"]
)
_config_case("empty output_dir", {"output_dir": ""}, ["output_dir"])
_config_case("output_dir is the working folder", {"output_dir": "."}, ["output_dir"])
_config_case("max_image_pixels 0", {"max_image_pixels": 0}, ["max_image_pixels"])
_config_case("val_split equals train_split", {"dataset.val_split": "train"}, ["val_split"])
_config_case("unknown synthetic split", {"dataset.eval_splits": ["train", "test"]}, ["'test'"])


@case(
    "config",
    "empty config.yaml",
    "snakemake -n",
    "run on the defaults, or one line naming config.yaml",
)
def _(world: World, d: Path) -> Outcome:
    (d / "config.yaml").write_text("")
    proc = smk(d, "-n")
    if proc.rc == 0:
        return accepted(proc)
    return refused(proc, ["config.yaml"])


@case(
    "config",
    "invalid YAML in config.yaml (`cam: [96, 160` unclosed)",
    "snakemake -n",
    "one line naming config.yaml and the line",
)
def _(world: World, d: Path) -> Outcome:
    text = yaml.safe_dump(tiny_config(), sort_keys=False) + "extra: [96, 160\n"
    return dry_run_refusal(d, text, ["config.yaml", "line"])


@case(
    "config",
    "YAML with a tab indent in config.yaml",
    "snakemake -n",
    "one line naming config.yaml and the line",
)
def _(world: World, d: Path) -> Outcome:
    text = yaml.safe_dump(tiny_config(), sort_keys=False).replace("  epochs: 1", "\tepochs: 1", 1)
    return dry_run_refusal(d, text, ["config.yaml", "line"])


@case(
    "config",
    "`--configfile` that does not exist",
    "snakemake -n --configfile nope.yaml",
    "one line naming nope.yaml",
)
def _(world: World, d: Path) -> Outcome:
    return dry_run_refusal(d, tiny_config(), ["nope.yaml"], "--configfile", d / "nope.yaml")


@case(
    "config",
    "`--config cam.epochs=3` (dotted key)",
    "snakemake -n -p --config",
    "applied as cam: {epochs: 3}, or one line naming cam.epochs",
)
def _(world: World, d: Path) -> Outcome:
    (d / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    proc = smk(d, "-n", "-p", "--config", "cam.epochs=3")
    if proc.rc != 0:
        return refused(proc, ["cam.epochs"])
    block = re.search(r"rule train_cam:(.*?)(?:\n\S*rule |\Z)", proc.text, re.S)
    applied = block is not None and re.search(r'"epochs": ?3\b', block.group(1))
    outcome = accepted(proc, None, None if applied else "accepted, but train_cam keeps epochs 1")
    outcome.note = "train_cam runs 3 epochs" if applied else ""
    return outcome


@case(
    "config",
    "`--config 'cam={epochs: 3}'` (the nested form)",
    "snakemake -n -p --config",
    "applied: train_cam runs 3 epochs",
)
def _(world: World, d: Path) -> Outcome:
    (d / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    proc = smk(d, "-n", "-p", "--config", "cam={epochs: 3}")
    block = re.search(r"rule train_cam:(.*?)(?:\n\S*rule |\Z)", proc.text, re.S)
    applied = block is not None and re.search(r'"epochs": ?3\b', block.group(1))
    outcome = accepted(proc, None, None if applied else "train_cam does not get epochs 3")
    outcome.note = "train_cam runs 3 epochs" if applied else ""
    return outcome


@case("config", "dataset root that does not exist", "snakemake -n", "one line naming the folder")
def _(world: World, d: Path) -> Outcome:
    config = voc_config(world, d, root=str(d / "no_such_root"))
    return dry_run_refusal(d, config, ["no_such_root"])


@case("config", "kind voc without dataset.root", "snakemake -n", "one line naming dataset.root")
def _(world: World, d: Path) -> Outcome:
    return dry_run_refusal(d, voc_config(world, d, root=None), ["dataset.root"])


@case(
    "config",
    "unknown split of a VOC dataset (`eval_splits: [train, tset]`)",
    "snakemake -n",
    "one line naming 'tset' and the splits there are",
)
def _(world: World, d: Path) -> Outcome:
    config = voc_config(world, d, eval_splits=["train", "tset"])
    return dry_run_refusal(d, config, ["tset"], guard=d / "data")


@case(
    "config",
    "output_dir with a space, quotes, `$(touch MARK)`, backquotes, é",
    "snakemake (real jobs up to a CAM shard)",
    "the jobs run on that folder; no MARK file appears anywhere",
)
def _(world: World, d: Path) -> Outcome:
    hostile = "out x 'q' \"dq\" $(touch MARK) `touch MARK` é"
    (d / "config.yaml").write_text(yaml.safe_dump(tiny_config(output_dir=hostile)))
    target = Path(hostile) / "cam" / "train" / "shard-000.h5"
    proc = smk(d, target)
    marks = [str(p) for p in d.rglob("MARK")] + [
        str(p) for p in (REPO / "MARK", Path.cwd() / "MARK") if p.exists()
    ]
    outcome = accepted(proc, None, None if (d / target).is_file() else f"{target} not made")
    if marks:  # a command ran: that counts whatever the exit code
        outcome.problems.append(f"MARK created: {marks[0]}")
    outcome.note = "no MARK" if not marks else ""
    return outcome


@case(
    "config",
    "`psa train-cam --settings` with an unknown key (`cam.epoch`)",
    "psa train-cam --settings JSON",
    "one line naming cam.epoch",
)
def _(world: World, d: Path) -> Outcome:
    args = world.data_args()
    proc = psa(
        "train-cam",
        *args,
        "--checkpoint",
        d / "c.pt",
        "--out-log",
        d / "l.csv",
        "--out",
        d / "w.pt",
        "--settings",
        '{"cam": {"epoch": 3}}',
    )
    return refused(proc, ["cam.epoch"], Guard(world.data()))


@case(
    "config",
    "`psa train-cam --resize-long 64 48` (reversed)",
    "psa train-cam",
    "one line naming resize_long",
)
def _(world: World, d: Path) -> Outcome:
    proc = psa(
        "train-cam",
        *world.data_args(),
        "--checkpoint",
        d / "c.pt",
        "--out-log",
        d / "l.csv",
        "--out",
        d / "w.pt",
        "--resize-long",
        64,
        48,
    )
    return refused(proc, ["resize_long"], Guard(world.data()))


@case(
    "config",
    "`psa train-cam --settings nope.yaml` (no such file)",
    "psa train-cam",
    "one line naming nope.yaml",
)
def _(world: World, d: Path) -> Outcome:
    proc = psa(
        "train-cam",
        *world.data_args(),
        "--checkpoint",
        d / "c.pt",
        "--out-log",
        d / "l.csv",
        "--out",
        d / "w.pt",
        "--settings",
        d / "nope.yaml",
    )
    return refused(proc, ["nope.yaml"])


# -- dataset ----------------------------------------------------------------------------

IMG1 = "syn_000001"


def _image(root: Path, name: str = IMG1) -> Path:
    return root / "JPEGImages" / f"{name}.jpg"


def _mask(root: Path, name: str = IMG1) -> Path:
    return root / "SegmentationClass" / f"{name}.png"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _dataset_case(name: str, expected: str, needles: Sequence[Needle], **env: str) -> Callable:
    def register(change: Callable[[Path], None]) -> Callable:
        @case("dataset", name, "psa index", expected)
        def _(world: World, d: Path) -> Outcome:
            return index_refusal(world, d, change, needles, **env)

        return change

    return register


@_dataset_case("corrupt JPEG (random bytes)", "one line naming the image", [f"{IMG1}.jpg"])
def _(root: Path) -> None:
    _image(root).write_bytes(np.random.default_rng(0).bytes(3000))


@_dataset_case("truncated JPEG (first half)", "one line naming the image", [f"{IMG1}.jpg"])
def _(root: Path) -> None:
    _truncate(_image(root))


@_dataset_case("empty (0-byte) image", "one line naming the image", [f"{IMG1}.jpg"])
def _(root: Path) -> None:
    _image(root).write_bytes(b"")


@_dataset_case("truncated PNG mask", "one line naming the mask", [f"{IMG1}.png"])
def _(root: Path) -> None:
    _truncate(_mask(root), 0.6)


@_dataset_case("mask in RGB mode", "one line naming the mask and its mode", [f"{IMG1}.png"])
def _(root: Path) -> None:
    path = _mask(root)
    Image.open(path).convert("RGB").save(path)


@_dataset_case("mask of the wrong size", "one line naming the mask and both sizes", [f"{IMG1}.png"])
def _(root: Path) -> None:
    path = _mask(root)
    mask = Image.open(path)
    mask.resize((mask.width + 3, mask.height)).save(path)


@_dataset_case(
    "mask with class index 9 of 2 classes (no XML)", "one line naming the mask", [f"{IMG1}.png"]
)
def _(root: Path) -> None:
    path = _mask(root)
    mask = np.array(Image.open(path))
    mask[:4, :4] = 9
    Image.fromarray(mask, mode="L").save(path)
    (root / "Annotations" / f"{IMG1}.xml").unlink()


@_dataset_case("malformed annotation XML", "one line naming the XML file", [f"{IMG1}.xml"])
def _(root: Path) -> None:
    path = root / "Annotations" / f"{IMG1}.xml"
    path.write_text(path.read_text()[:-30])


@_dataset_case(
    "header of a 16000 x 12000 PNG as a mask (no pixel data)",
    "one line naming the mask and the pixel limit, at once",
    [f"{IMG1}.png", "max_image_pixels"],
)
def _(root: Path) -> None:
    write_png_header(_mask(root), 16_000, 12_000)


@_dataset_case(
    "`PSA_MAX_IMAGE_PIXELS=100` on 48-64 px images",
    "one line naming the first image and the limit",
    ["syn_000000.jpg", ("PSA_MAX_IMAGE_PIXELS", "max_image_pixels")],
    PSA_MAX_IMAGE_PIXELS="100",
)
def _(root: Path) -> None:
    pass


@_dataset_case(
    "`PSA_MAX_IMAGE_PIXELS=lots` (not a number)",
    "one line naming the variable",
    ["PSA_MAX_IMAGE_PIXELS"],
    PSA_MAX_IMAGE_PIXELS="lots",
)
def _(root: Path) -> None:
    pass


@_dataset_case(
    "list with a name holding a space (`my photo`)",
    "one line naming the list, the line and the name",
    ["train.txt", "line 9", "my photo"],
)
def _(root: Path) -> None:
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        shutil.copy(root / folder / f"{IMG1}{suffix}", root / folder / f"my photo{suffix}")
    shutil.copy(root / "Annotations" / f"{IMG1}.xml", root / "Annotations" / "my photo.xml")
    with list_file(root).open("a") as f:
        f.write("my photo\n")


@_dataset_case(
    "image listed but missing (`ghost`)",
    "one line naming ghost.jpg and the list",
    ["ghost.jpg", "train.txt"],
)
def _(root: Path) -> None:
    with list_file(root).open("a") as f:
        f.write("ghost\n")


@_dataset_case(
    "a name listed twice", "one line naming the list and the name", ["train.txt", "syn_000000"]
)
def _(root: Path) -> None:
    with list_file(root).open("a") as f:
        f.write("syn_000000\n")


@_dataset_case("empty image list", "one line naming the list", ["train.txt"])
def _(root: Path) -> None:
    list_file(root).write_text("")


@_dataset_case("classes.txt lists a class twice", "one line naming classes.txt", ["classes.txt"])
def _(root: Path) -> None:
    path = root / "classes.txt"
    first = path.read_text().split()[0]
    path.write_text(path.read_text() + f"{first}\n")


@case(
    "dataset", "dataset root that does not exist", "psa index --root", "one line naming the folder"
)
def _(world: World, d: Path) -> Outcome:
    return refused(psa(*index_cmd(d / "no_such_root", d)), ["no_such_root"])


@case(
    "dataset",
    "unknown split (`--split tset`)",
    "psa index",
    "one line naming 'tset' and the splits there are",
)
def _(world: World, d: Path) -> Outcome:
    guard = Guard(world.data())
    return refused(psa(*index_cmd(world.data(), d, "tset")), ["tset", "train"], guard)


def _index_accepts(world: World, d: Path, change: Callable[[Path], None]) -> tuple[Proc, Guard]:
    root = copy_data(world, d / "data")
    change(root)
    guard = Guard(root)
    return psa(*index_cmd(root, d)), guard


def _names_check(d: Path, wanted: Sequence[str]) -> str | None:
    path = d / "idx.txt"
    if not path.is_file():
        return "no image list written"
    names = path.read_text(encoding="utf-8").splitlines()
    if names != list(wanted):
        return f"names read as {names[:2]!r}..., not {list(wanted)[:2]!r}..."
    return None


@case(
    "dataset",
    "image list with a UTF-8 byte-order mark",
    "psa index",
    "accepted; the first name read without the BOM",
)
def _(world: World, d: Path) -> Outcome:
    def change(root: Path) -> None:
        path = list_file(root)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())

    proc, guard = _index_accepts(world, d, change)
    return accepted(proc, guard, _names_check(d, TRAIN))


@case(
    "dataset",
    "image list with Windows line ends (CRLF)",
    "psa index",
    "accepted; names read without the CR",
)
def _(world: World, d: Path) -> Outcome:
    def change(root: Path) -> None:
        path = list_file(root)
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))

    proc, guard = _index_accepts(world, d, change)
    return accepted(proc, guard, _names_check(d, TRAIN))


@case(
    "dataset",
    "image list in Latin-1 (`café`)",
    "psa index",
    "one line naming the list (not UTF-8), or café read right",
)
def _(world: World, d: Path) -> Outcome:
    def change(root: Path) -> None:
        for folder, suffix in (
            ("JPEGImages", ".jpg"),
            ("SegmentationClass", ".png"),
            ("Annotations", ".xml"),
        ):
            shutil.copy(root / folder / f"{IMG1}{suffix}", root / folder / f"café{suffix}")
        path = list_file(root)
        path.write_bytes(path.read_bytes() + "café\n".encode("latin-1"))

    proc, guard = _index_accepts(world, d, change)
    if proc.rc == 0:
        return accepted(proc, guard, _names_check(d, [*TRAIN, "café"]))
    return refused(proc, ["train.txt"], guard)


@case(
    "dataset",
    "CMYK JPEG in the dataset",
    "psa index, then io.read_image",
    "accepted; decoded to the RGB it shows (mean error < 10)",
)
def _(world: World, d: Path) -> Outcome:
    width, height = Image.open(_image(world.data())).size
    rgb = smooth_rgb(height, width)

    def change(root: Path) -> None:
        Image.fromarray(rgb).convert("CMYK").save(_image(root), quality=95)

    proc, guard = _index_accepts(world, d, change)
    problem, note = decode_check(_image(d / "data"), rgb, d, max_mean=10)
    outcome = accepted(proc, guard, problem)
    outcome.note = note
    return outcome


# -- images for psa predict ------------------------------------------------------------


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth colour image with a block: small JPEG errors, every channel used."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    image[height // 4 : height // 2, width // 4 : width // 2] = (200, 40, 60)
    return image.astype(np.uint8)


def write_png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height 8-bit grey pixels and holds none (as tests/test_io.py)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"")
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


DECODE = (
    "import json, sys; import numpy as np; from psa_core import io; "
    "a = io.read_image(sys.argv[1]).astype(int); e = np.load(sys.argv[2]).astype(int); "
    "d = np.abs(a - e) if a.shape == e.shape else None; "
    "print(json.dumps({'shape': list(a.shape), 'max': None if d is None else int(d.max()), "
    "'mean': None if d is None else float(d.mean()), 'values': a[0, :4, 0].tolist()}))"
)


def decode_check(
    path: Path,
    expected: np.ndarray,
    d: Path,
    *,
    max_diff: int | None = None,
    max_mean: float | None = None,
) -> tuple[str | None, str]:
    """(problem or None, note): `psa_core.io.read_image(path)` against the `expected` RGB."""
    np.save(d / "expected.npy", expected)
    proc = run("psa", [sys.executable, "-c", DECODE, path, d / "expected.npy"])
    if proc.rc != 0:
        return f"read_image failed: {message(proc)}", ""
    got = json.loads(proc.out.strip().splitlines()[-1])
    if got["max"] is None:
        return f"decoded shape {got['shape']}, not {list(expected.shape)}", ""
    note = f"decoded: max error {got['max']}, mean {got['mean']:.2f}"
    if max_diff is not None and got["max"] > max_diff:
        return f"decoded wrong: {note}, first values {got['values']}", note
    if max_mean is not None and got["mean"] > max_mean:
        return f"decoded wrong: {note}, first values {got['values']}", note
    return None, note


def predict_cmd(world: World, images: Path, out: Path, *extra: object) -> list[object]:
    return [
        "predict",
        "--model",
        world.seg_model(),
        "--images",
        images,
        "--out",
        out,
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def _predict_accepts(
    world: World, d: Path, name: str, image: Image.Image, expected: np.ndarray, max_diff: int
) -> Outcome:
    folder = d / "in"
    folder.mkdir()
    image.save(folder / name)
    guard = Guard(folder)
    proc = psa(*predict_cmd(world, folder, d / "out"))
    mask = d / "out" / f"{Path(name).stem}.png"
    size = Image.open(mask).size if mask.is_file() else None
    mask_problem = None if size == image.size else f"mask {mask.name}: size {size}"
    problem, note = decode_check(folder / name, expected, d, max_diff=max_diff)
    outcome = accepted(proc, guard, mask_problem, problem)
    outcome.note = note
    return outcome


@case(
    "dataset",
    "16-bit grey PNG (values 0..65535)",
    "psa predict, then io.read_image",
    "accepted; scaled to 0..255 (65535 -> 255, 32768 -> 128), not clipped white",
)
def _(world: World, d: Path) -> Outcome:
    y, x = np.mgrid[0:40, 0:56]
    values = ((x * 56 + y) * 65535 // (40 * 56)).astype(np.uint16)
    values[0, :4] = (0, 257, 32768, 65535)
    image = Image.fromarray(values)
    if image.mode != "I;16":
        raise RuntimeError(f"16-bit test image has mode {image.mode}")
    grey = (values.astype(np.uint32) * 255 + 32767) // 65535
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    return _predict_accepts(world, d, "grey16.png", image, expected, max_diff=1)


@case(
    "dataset",
    "RGBA PNG",
    "psa predict, then io.read_image",
    "accepted; alpha dropped, colours as stored",
)
def _(world: World, d: Path) -> Outcome:
    rgb = smooth_rgb(40, 56)
    alpha = np.zeros((40, 56, 1), np.uint8)
    alpha[:, 28:] = 255
    image = Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA")
    return _predict_accepts(world, d, "rgba.png", image, rgb, max_diff=0)


@case(
    "dataset",
    "LA PNG (grey + alpha)",
    "psa predict, then io.read_image",
    "accepted; grey replicated to RGB",
)
def _(world: World, d: Path) -> Outcome:
    grey = smooth_rgb(40, 56)[:, :, 0]
    alpha = np.full_like(grey, 128)
    image = Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA")
    return _predict_accepts(world, d, "la.png", image, np.repeat(grey[:, :, None], 3, 2), 0)


@case(
    "dataset",
    "palette (P) PNG",
    "psa predict, then io.read_image",
    "accepted; palette colours decoded",
)
def _(world: World, d: Path) -> Outcome:
    image = Image.fromarray(smooth_rgb(40, 56)).quantize(16)
    expected = np.array(image.convert("RGB"))
    return _predict_accepts(world, d, "palette.png", image, expected, max_diff=0)


def _predict_refusal(
    world: World, d: Path, name: str, write: Callable[[Path], None], needles: Sequence[Needle]
) -> Outcome:
    folder = d / "in"
    folder.mkdir()
    write(folder / name)
    guard = Guard(folder)
    return refused(psa(*predict_cmd(world, folder, d / "out")), needles, guard)


@case("dataset", "float (mode F) TIFF", "psa predict", "one line naming the image and mode F")
def _(world: World, d: Path) -> Outcome:
    def write(path: Path) -> None:
        Image.fromarray(np.linspace(0, 1, 40 * 56, dtype=np.float32).reshape(40, 56)).save(path)

    return _predict_refusal(world, d, "float.tif", write, ["float.tif"])


@case("dataset", "truncated PNG image", "psa predict", "one line naming the image")
def _(world: World, d: Path) -> Outcome:
    def write(path: Path) -> None:
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 80, 3), np.uint8)).save(path)
        _truncate(path, 0.5)

    return _predict_refusal(world, d, "cut.png", write, ["cut.png"])


@case(
    "dataset",
    "header of a 16000 x 12000 PNG (no pixel data)",
    "psa predict",
    "one line naming the image and the pixel limit, before decoding",
)
def _(world: World, d: Path) -> Outcome:
    def write(path: Path) -> None:
        write_png_header(path, 16_000, 12_000)

    outcome = _predict_refusal(world, d, "huge.png", write, ["huge.png", "max_image_pixels"])
    return outcome


@case("dataset", "an empty folder of images", "psa predict", "one line naming the folder")
def _(world: World, d: Path) -> Outcome:
    (d / "empty_in").mkdir()
    return refused(psa(*predict_cmd(world, d / "empty_in", d / "out")), ["empty_in"])


# -- weights and models --------------------------------------------------------------------


def infer_cmd(world: World, weights: Path, out: Path, *extra: object) -> list[object]:
    return [
        "infer-cam",
        *world.data_args(),
        "--weights",
        weights,
        "--out",
        out,
        "--scales",
        1.0,
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def _weights_case(
    name: str, expected: str, make: Callable[[World, Path], Path], extra: Sequence[object] = ()
) -> None:
    @case("weights and models", name, "psa infer-cam --weights", expected)
    def _(world: World, d: Path) -> Outcome:
        weights = make(world, d)
        guard = Guard(weights, world.data())
        proc = psa(*infer_cmd(world, weights, d / "cams.h5", *extra))
        return refused(proc, [weights.name], guard)


def _truncated(world: World, d: Path) -> Path:
    path = d / "truncated.pt"
    path.write_bytes(world.cam_weights().read_bytes()[:100_000])
    return path


def _empty(world: World, d: Path) -> Path:
    path = d / "empty.pt"
    path.write_bytes(b"")
    return path


def _copy_weights(world: World, d: Path) -> Path:
    return Path(shutil.copy(world.cam_weights(), d / "tiny_weights.pt"))


def _seg_weights(world: World, d: Path) -> Path:
    return Path(shutil.copy(world.seg_model() / "weights.pt", d / "seg_weights.pt"))


def _missing_guarded(name: str, expected: str) -> None:
    @case("weights and models", name, "psa infer-cam --weights", expected)
    def _(world: World, d: Path) -> Outcome:
        proc = psa(*infer_cmd(world, d / "no_such_weights.pt", d / "cams.h5"))
        return refused(proc, ["no_such_weights.pt"], Guard(world.data()))


_missing_guarded("weights file that does not exist", "one line naming the file")
_weights_case(
    "weights of another backbone (tiny weights, `--backbone vgg16d`)",
    "one line naming the file and the mismatch",
    _copy_weights,
    ["--backbone", "vgg16d"],
)
_weights_case(
    "weights of another network (the segmentation model's, as CAM weights)",
    "one line naming the file and the mismatch",
    _seg_weights,
)
_weights_case("truncated .pt (first 100 kB)", "one line naming the file", _truncated)
_weights_case("empty (0-byte) .pt", "one line naming the file", _empty)


def evil_copy(world: World, dest: Path) -> Path:
    """A copy of the malicious file at `dest`, its marker removed (a case before may have run it)."""
    world.evil_marker().unlink(missing_ok=True)
    return Path(shutil.copy(world.evil(), dest))


def _evil_outcome(world: World, proc: Proc, needles: Sequence[Needle], guard: Guard) -> Outcome:
    outcome = refused(proc, needles, guard)
    if world.evil_marker().exists():
        outcome.problems.append("the pickle's payload RAN (marker file created)")
        outcome.note = "payload ran"
    else:
        outcome.note = "payload did not run"
    return outcome


@case(
    "weights and models",
    "pickle with a malicious `__reduce__` as CAM weights",
    "psa infer-cam --weights",
    "refused in one line; the payload (touch MARKER) never runs",
)
def _(world: World, d: Path) -> Outcome:
    evil = evil_copy(world, d / "evil.pt")
    proc = psa(*infer_cmd(world, evil, d / "cams.h5"))
    return _evil_outcome(world, proc, ["evil.pt"], Guard(evil))


@case(
    "weights and models",
    "malicious pickle as the resume checkpoint",
    "psa train-cam --checkpoint",
    "refused in one line; the payload never runs",
)
def _(world: World, d: Path) -> Outcome:
    evil = evil_copy(world, d / "evil_ckpt.pt")
    proc = psa(
        "train-cam",
        *world.data_args(),
        "--checkpoint",
        evil,
        "--out-log",
        d / "l.csv",
        "--out",
        d / "w.pt",
        "--epochs",
        1,
        *TRAIN_ARGS,
    )
    return _evil_outcome(world, proc, ["evil_ckpt.pt"], Guard(world.data()))


@case(
    "weights and models",
    "malicious pickle as initial weights",
    "psa train-cam --init",
    "refused in one line; the payload never runs",
)
def _(world: World, d: Path) -> Outcome:
    evil = evil_copy(world, d / "evil_init.pt")
    proc = psa(
        "train-cam",
        *world.data_args(),
        "--init",
        evil,
        "--checkpoint",
        d / "c.pt",
        "--out-log",
        d / "l.csv",
        "--out",
        d / "w.pt",
        "--epochs",
        1,
        *TRAIN_ARGS,
    )
    return _evil_outcome(world, proc, ["evil_init.pt"], Guard(evil, world.data()))


def model_copy(world: World, d: Path) -> Path:
    return Path(shutil.copytree(world.seg_model(), d / "model"))


def _edit_model_json(folder: Path, edit: Callable[[dict], None]) -> None:
    path = folder / "model.json"
    description = json.loads(path.read_text())
    edit(description)
    path.write_text(json.dumps(description, indent=2))


def _images_folder(world: World, d: Path) -> Path:
    folder = d / "in"
    folder.mkdir()
    for name in TRAIN[:2]:
        shutil.copy(_image(world.data(), name), folder)
    return folder


@case(
    "weights and models",
    "malicious pickle as a model folder's weights (SHA-256 updated)",
    "psa predict --model",
    "refused in one line; the payload never runs",
)
def _(world: World, d: Path) -> Outcome:
    folder = model_copy(world, d)
    evil_copy(world, folder / "weights.pt")
    digest = sha256(folder / "weights.pt")
    _edit_model_json(folder, lambda m: m["weights"].update(sha256=digest))
    images = _images_folder(world, d)
    proc = psa(
        "predict", "--model", folder, "--images", images, "--out", d / "out", "--device", "cpu"
    )
    return _evil_outcome(world, proc, ["weights.pt"], Guard(images))


def _model_case(
    name: str, expected: str, edit: Callable[[World, Path], object], needles: Sequence[Needle]
) -> None:
    @case("weights and models", name, "psa predict --model", expected)
    def _(world: World, d: Path) -> Outcome:
        folder = model_copy(world, d)
        edit(world, folder)
        images = _images_folder(world, d)
        guard = Guard(images, folder)
        proc = psa(
            "predict", "--model", folder, "--images", images, "--out", d / "out", "--device", "cpu"
        )
        return refused(proc, needles, guard)


_model_case(
    "model.json without `classes`",
    "one line naming model.json and classes",
    lambda w, f: _edit_model_json(f, lambda m: m.pop("classes")),
    ["model.json", "classes"],
)
_model_case(
    'model.json with `head.dilation: "two"`',
    "one line naming model.json and dilation",
    lambda w, f: _edit_model_json(f, lambda m: m["head"].update(dilation="two")),
    ["model.json", "dilation"],
)
_model_case(
    "model.json with `classes` a string",
    "one line naming model.json and classes",
    lambda w, f: _edit_model_json(f, lambda m: m.update(classes="background,ruby,emerald")),
    ["model.json", "classes"],
)
_model_case(
    "model.json of an unknown format (`psa-seg-model/9`)",
    "one line naming model.json and the format",
    lambda w, f: _edit_model_json(f, lambda m: m.update(format="psa-seg-model/9")),
    ["model.json", "psa-seg-model/9"],
)
_model_case(
    "model.json with an unknown backbone (`resnet99`)",
    "one line naming model.json and the backbone",
    lambda w, f: _edit_model_json(f, lambda m: m.update(backbone="resnet99")),
    ["model.json", "resnet99"],
)
_model_case(
    "model.json that is not JSON",
    "one line naming model.json",
    lambda w, f: (f / "model.json").write_text("{not json"),
    ["model.json"],
)
_model_case(
    "model folder whose weights are not the recorded ones (SHA-256)",
    "one line naming weights.pt",
    lambda w, f: shutil.copy(w.cam_weights(), f / "weights.pt"),
    ["weights.pt"],
)


@case(
    "weights and models",
    "model folder that does not exist",
    "psa predict --model",
    "one line naming the folder",
)
def _(world: World, d: Path) -> Outcome:
    images = _images_folder(world, d)
    proc = psa("predict", "--model", d / "no_such_model", "--images", images, "--out", d / "out")
    return refused(proc, ["no_such_model"], Guard(images))


# -- outputs and faults -------------------------------------------------------------------


@case(
    "outputs and faults",
    "`--out` in a read-only folder (chmod 0o555)",
    "psa predict --out",
    "one line naming the folder",
)
def _(world: World, d: Path) -> Outcome:
    if os.geteuid() == 0:
        return Outcome(
            skipped="running as root: chmod 0o555 does not stop root "
            "(the next case writes under a regular file instead)"
        )
    images = _images_folder(world, d)
    locked = d / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = psa(*predict_cmd(world, images, locked / "masks"))
    finally:
        locked.chmod(0o755)
    return refused(proc, ["locked"], Guard(images))


@case(
    "outputs and faults",
    "`--out` under a regular file (`afile/masks`)",
    "psa predict --out",
    "one line naming the path",
)
def _(world: World, d: Path) -> Outcome:
    images = _images_folder(world, d)
    (d / "afile").write_text("a user's file\n")
    guard = Guard(images, d / "afile")
    return refused(psa(*predict_cmd(world, images, d / "afile" / "masks")), ["afile"], guard)


@case(
    "outputs and faults",
    "`--out` under a regular file (`afile/cams.h5`)",
    "psa infer-cam --out",
    "one line naming the path",
)
def _(world: World, d: Path) -> Outcome:
    (d / "afile").write_text("a user's file\n")
    guard = Guard(d / "afile", world.cam_weights())
    proc = psa(*infer_cmd(world, world.cam_weights(), d / "afile" / "cams.h5"))
    return refused(proc, ["afile"], guard)


@case(
    "outputs and faults",
    "`--out` is an existing folder",
    "psa infer-cam --out",
    "one line naming the folder; its files kept",
)
def _(world: World, d: Path) -> Outcome:
    folder = d / "a_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    guard = Guard(folder, world.cam_weights())
    proc = psa(*infer_cmd(world, world.cam_weights(), folder))
    return refused(proc, [str(folder)], guard)  # the path given, not a temporary beside it


@case(
    "outputs and faults",
    "`--out` equal to `--weights`",
    "psa infer-cam --out",
    "refused in one line; the weights keep their bytes",
)
def _(world: World, d: Path) -> Outcome:
    weights = Path(shutil.copy(world.cam_weights(), d / "weights.pt"))
    guard = Guard(weights)
    return refused(psa(*infer_cmd(world, weights, weights)), ["weights.pt"], guard)


@case(
    "outputs and faults",
    "`--out-maps` is the dataset's SegmentationClass folder",
    "psa crf-labels --out-maps",
    "refused, or the folder's other files kept",
)
def _(world: World, d: Path) -> Outcome:
    w = world.crf_world()
    root = Path(shutil.copytree(w["root"], d / "data"))
    guard = Guard(root)
    args = world.crf_args(d / "crf.h5", root / "SegmentationClass")
    args[args.index("--root") + 1] = root
    proc = psa(*args)
    if proc.rc == 0:
        return accepted(proc, guard)
    return refused(proc, ["SegmentationClass"], guard)


def _predict_same_folder(world: World, d: Path, suffix: str, overlay: bool) -> tuple[Proc, Guard]:
    folder = d / "photos"
    folder.mkdir()
    for name in TRAIN[:3]:
        image = Image.open(_image(world.data(), name))
        image.save(folder / f"{name}{suffix}")
    guard = Guard(folder)
    extra = ["--overlay"] if overlay else []
    return psa(*predict_cmd(world, folder, folder, *extra)), guard


@case(
    "outputs and faults",
    "`--out` = the input folder, JPEG inputs, `--overlay`",
    "psa predict",
    "refused in one line (overlays NAME.jpg would replace the inputs)",
)
def _(world: World, d: Path) -> Outcome:
    proc, guard = _predict_same_folder(world, d, ".jpg", overlay=True)
    return refused(proc, [("photos", ".jpg")], guard)


@case(
    "outputs and faults",
    "`--out` = the input folder, PNG inputs",
    "psa predict",
    "refused in one line (masks NAME.png would replace the inputs)",
)
def _(world: World, d: Path) -> Outcome:
    proc, guard = _predict_same_folder(world, d, ".png", overlay=False)
    return refused(proc, [("photos", ".png")], guard)


@case(
    "outputs and faults",
    "`--out` = the input folder, JPEG inputs, no overlay",
    "psa predict",
    "accepted: NAME.png masks beside the inputs, which keep their bytes",
)
def _(world: World, d: Path) -> Outcome:
    proc, guard = _predict_same_folder(world, d, ".jpg", overlay=False)
    made = sorted(p.name for p in (d / "photos").glob("*.png"))
    return accepted(proc, guard, None if len(made) == 3 else f"masks written: {made}")


@case(
    "outputs and faults",
    "`--out` = one input image",
    "psa predict --images X.jpg --out X.jpg",
    "refused in one line; the image keeps its bytes",
)
def _(world: World, d: Path) -> Outcome:
    image = Path(shutil.copy(_image(world.data(), TRAIN[0]), d / "photo.jpg"))
    guard = Guard(image)
    return refused(psa(*predict_cmd(world, image, image)), ["photo.jpg"], guard)


def train_cam_cmd(world: World, folder: Path, epochs: int) -> list[object]:
    return [
        "train-cam",
        *world.data_args(),
        "--checkpoint",
        folder / "ckpt.pt",
        "--out-log",
        folder / "log.csv",
        "--out",
        folder / "weights.pt",
        "--epochs",
        epochs,
        *TRAIN_ARGS,
    ]


@case(
    "outputs and faults",
    "SIGTERM during training",
    "psa train-cam (60 epochs), rerun",
    "exit 143 with a checkpoint; the rerun resumes and finishes",
)
def _(world: World, d: Path) -> Outcome:
    folder = d / "cam"
    guard = Guard(world.data())
    job = Background(d, "first", *train_cam_cmd(world, folder, 60))
    if not wait_for(lambda: (folder / "ckpt.pt").is_file() or not job.alive(), 120):
        job.signal(signal.SIGKILL)
    job.signal(signal.SIGTERM)
    first = job.wait()
    outcome = refused(first, ["ckpt.pt"], expect_rc=128 + signal.SIGTERM)
    if (folder / "weights.pt").exists():
        outcome.problems.append("weights.pt written by the stopped run")
    if not (folder / "ckpt.pt").is_file():
        outcome.problems.append("no checkpoint left to resume from")
    second = psa(*train_cam_cmd(world, folder, 60))
    resumed = "resuming from" in second.err
    if second.rc != 0 or has_traceback(second):
        outcome.problems.append(f"rerun: exit {second.rc}: {message(second)}")
    elif not resumed:
        outcome.problems.append("rerun started over instead of resuming")
    if not (folder / "weights.pt").is_file():
        outcome.problems.append("rerun wrote no weights")
    left = stale_temps(folder)
    if left:
        outcome.problems.append(f"left after the rerun: {', '.join(left)}")
    outcome.traceback = outcome.traceback or has_traceback(second)
    outcome.note = f"rerun: exit {second.rc}, {'resumed' if resumed else 'not resumed'}"
    outcome.lost = guard.lost()
    return outcome


@case(
    "outputs and faults",
    "`kill -9` during training",
    "psa train-cam (60 epochs), rerun",
    "no weights that look finished; the rerun resumes from the last checkpoint, "
    "and no temp file is left",
)
def _(world: World, d: Path) -> Outcome:
    folder = d / "cam"
    guard = Guard(world.data())
    job = Background(d, "first", *train_cam_cmd(world, folder, 60))
    wait_for(lambda: (folder / "ckpt.pt").is_file() or not job.alive(), 120)
    time.sleep(0.4)
    job.signal(signal.SIGKILL)
    first = job.wait()
    outcome = Outcome(rc=first.rc, message="killed", traceback=has_traceback(first))
    if first.rc != -signal.SIGKILL:
        outcome.problems.append(f"not killed mid-run (exit {first.rc})")
    if (folder / "weights.pt").exists():
        outcome.problems.append("weights.pt exists after the kill")
    stale = stale_temps(folder)
    second = psa(*train_cam_cmd(world, folder, 60))
    resumed = "resuming from" in second.err
    if second.rc != 0 or has_traceback(second):
        outcome.problems.append(f"rerun: exit {second.rc}: {message(second)}")
    elif not resumed:
        outcome.problems.append("rerun started over instead of resuming")
    left = [n for n in stale_temps(folder) if n.endswith(".tmp")]
    if left:
        outcome.problems.append(f"stale temp left after the rerun: {', '.join(left)}")
    outcome.traceback = outcome.traceback or has_traceback(second)
    outcome.note = (
        f"after the kill: {', '.join(stale) or 'no temp file'}; rerun: exit {second.rc}, "
        f"{'resumed' if resumed else 'not resumed'}"
    )
    outcome.lost = guard.lost()
    return outcome


def _crf_stop(world: World, d: Path, signum: int) -> tuple[Proc, list[str], Path]:
    """crf-labels into d/crf, stopped by `signum` mid-write: once its temporary label-map
    folder holds two maps. Returns the process, the temp names it saw, the folder."""
    folder = d / "crf"
    folder.mkdir(exist_ok=True)
    job = Background(d, f"crf-{signum}", *world.crf_args(folder / "shard.h5", folder / "maps"))
    seen: list[str] = []

    def writing() -> bool:
        seen[:] = [n for n in os.listdir(folder) if n.endswith(".tmp")]
        with contextlib.suppress(OSError):  # the folder may vanish while we look
            if any(len(os.listdir(folder / n)) >= 2 for n in seen if (folder / n).is_dir()):
                return True
        return not job.alive()

    wait_for(writing, 120, poll=0.0005)
    job.signal(signum)
    return job.wait(), list(seen), folder


def _crf_rerun(world: World, folder: Path, outcome: Outcome) -> None:
    rerun = psa(*world.crf_args(folder / "shard.h5", folder / "maps"))
    if rerun.rc != 0 or has_traceback(rerun):
        outcome.problems.append(f"rerun: exit {rerun.rc}: {message(rerun)}")
        outcome.traceback = outcome.traceback or has_traceback(rerun)
        return
    maps = list((folder / "maps").glob("*.png"))
    if len(maps) != 16 or not (folder / "shard.h5").is_file():
        outcome.problems.append(f"rerun made {len(maps)} maps of 16")
    left = stale_temps(folder)
    if left:
        outcome.problems.append(f"stale temp left after the rerun: {', '.join(left)}")


@case(
    "outputs and faults",
    "`kill -9` while writing (fresh outputs)",
    "psa crf-labels, then rerun",
    "nothing that looks finished; the rerun succeeds and removes the stale temp files",
)
def _(world: World, d: Path) -> Outcome:
    guard = Guard(world.crf_world()["root"], world.crf_world()["cams"])
    proc, seen, folder = _crf_stop(world, d, signal.SIGKILL)
    outcome = Outcome(rc=proc.rc, message="killed", traceback=has_traceback(proc))
    if proc.rc != -signal.SIGKILL or not seen:
        outcome.problems.append(f"not caught while writing (exit {proc.rc})")
    finished = [n for n in ("shard.h5", "maps") if (folder / n).exists()]
    if finished:
        outcome.problems.append(f"looks finished after the kill: {', '.join(finished)}")
    stale = stale_temps(folder)
    _crf_rerun(world, folder, outcome)
    outcome.note = f"after the kill: {', '.join(stale) or 'no temp file'}"
    outcome.lost = guard.lost()
    return outcome


@case(
    "outputs and faults",
    "`kill -9` while rewriting finished outputs",
    "psa crf-labels twice, the second killed",
    "the finished shard and label maps keep their bytes",
)
def _(world: World, d: Path) -> Outcome:
    folder = d / "crf"
    first = psa(*world.crf_args(folder / "shard.h5", folder / "maps"))
    if first.rc != 0:
        return accepted(first)
    guard = Guard(folder / "shard.h5", folder / "maps", world.crf_world()["root"])
    proc, seen, _ = _crf_stop(world, d, signal.SIGKILL)
    outcome = Outcome(rc=proc.rc, message="killed", traceback=has_traceback(proc))
    if proc.rc != -signal.SIGKILL or not seen:
        outcome.problems.append(f"not caught while writing (exit {proc.rc})")
    outcome.lost = guard.lost()
    stale = stale_temps(folder)
    outcome.note = f"after the kill: {', '.join(stale) or 'no temp file'}"
    return outcome


@case(
    "outputs and faults",
    "SIGTERM while writing",
    "psa crf-labels",
    "exit 143, one line; no output and no temp file left",
)
def _(world: World, d: Path) -> Outcome:
    guard = Guard(world.crf_world()["root"], world.crf_world()["cams"])
    proc, seen, folder = _crf_stop(world, d, signal.SIGTERM)
    outcome = refused(proc, ["SIGTERM"], guard, expect_rc=128 + signal.SIGTERM)
    if not seen:
        outcome.problems.append("not caught while writing")
    left = [p.name for p in folder.iterdir()]
    if left:
        outcome.problems.append(f"left behind: {', '.join(sorted(left))}")
    return outcome


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "2m"):
    """A tmpfs of `size` mounted at `folder` (needs root): yields None, or why it cannot be made."""
    folder.mkdir(parents=True)
    if shutil.which("mount") is None:
        yield "the `mount` tool is not installed"
        return
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        yield f"cannot make a {size} tmpfs (mount needs root: {why})"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


DISK_FULL = ("No space left", "no space left", "disk full", "disk is full", "ENOSPC")


@case(
    "outputs and faults",
    "disk full (2 MB tmpfs) while saving a checkpoint",
    "psa train-cam",
    "one line naming the disk and the file; nothing that looks finished, "
    "no temp file; the disk's other files kept",
)
def _(world: World, d: Path) -> Outcome:
    with small_disk(d / "disk") as reason:
        if reason:
            return Outcome(skipped=reason)
        disk = d / "disk"
        (disk / "keep.txt").write_text("a user's file\n" * 100)
        guard = Guard(disk / "keep.txt", world.data())
        proc = psa(*train_cam_cmd(world, disk, 2))
        outcome = refused(proc, [DISK_FULL, "disk/"], guard)
        if (disk / "weights.pt").exists():
            outcome.problems.append("weights.pt exists")
        temps = [n for n in stale_temps(disk) if n.endswith(".tmp")]
        if temps:
            outcome.problems.append(f"temp left: {', '.join(temps)}")
        outcome.note = "left: " + ", ".join(sorted(p.name for p in disk.iterdir()))
        return outcome


@case(
    "outputs and faults",
    "disk full (tmpfs nearly full) while writing CRF outputs",
    "psa crf-labels",
    "one line naming the disk and the file; no temp file; the disk's other files kept",
)
def _(world: World, d: Path) -> Outcome:
    world.crf_world()
    with small_disk(d / "disk") as reason:
        if reason:
            return Outcome(skipped=reason)
        disk = d / "disk"
        (disk / "filler.bin").write_bytes(np.random.default_rng(0).bytes(1_950_000))
        guard = Guard(disk / "filler.bin", world.crf_world()["root"])
        proc = psa(*world.crf_args(disk / "shard.h5", disk / "maps"))
        outcome = refused(proc, [DISK_FULL, "disk/"], guard)
        left = sorted(p.name for p in disk.iterdir() if p.name != "filler.bin")
        if left:
            outcome.problems.append(f"left: {', '.join(left)}")
        return outcome


@case(
    "outputs and faults",
    "two trainings with the same --out and --checkpoint at once",
    "psa train-cam x 2",
    "the second refuses in one line naming the checkpoint (a lock); "
    "the first finishes with valid weights",
)
def _(world: World, d: Path) -> Outcome:
    folder = d / "cam"
    guard = Guard(world.data())
    first = Background(d, "first", *train_cam_cmd(world, folder, 60))
    wait_for(lambda: (folder / "ckpt.pt").is_file() or not first.alive(), 120)
    second = Background(d, "second", *train_cam_cmd(world, folder, 60))
    b = second.wait()
    a = first.wait()
    outcome = Outcome(
        rc=b.rc,
        message=message(b) if b.rc else "",
        traceback=has_traceback(a) or has_traceback(b),
    )
    outcome.note = f"first: exit {a.rc}; second: exit {b.rc}"
    codes = sorted([a.rc, b.rc], key=lambda c: c != 0)
    if outcome.traceback:
        outcome.problems.append("traceback")
    if codes[0] != 0:
        outcome.problems.append("neither finished")
    elif codes[1] == 0:
        outcome.problems.append("both ran to the end: no lock")
    else:
        loser = b if b.rc else a
        lacking = names_all(message(loser), [("ckpt.pt", "weights.pt", "cam/")])
        if lacking:
            outcome.problems.append(f"refusal does not name {lacking}")
        outcome.message = message(loser)
    check = "import sys, torch; assert isinstance(torch.load(sys.argv[1], weights_only=True), dict)"
    loads = run("psa", [sys.executable, "-c", check, folder / "weights.pt"])
    if loads.rc != 0:
        outcome.problems.append("weights.pt does not load")
    outcome.lost = guard.lost()
    return outcome


# -- running and reporting ----------------------------------------------------------------


@dataclasses.dataclass
class Row:
    number: int
    case: Case
    outcome: Outcome
    seconds: float


def run_case(world: World, item: Case, folder: Path) -> Outcome:
    folder.mkdir(parents=True)
    try:
        return item.func(world, folder)
    except SetupError as exc:
        return Outcome(message=f"setup failed: {exc}", problems=[f"setup failed: {exc}"])
    except Exception as exc:  # a bug of this script: shown as such, never as ok
        return Outcome(
            message=f"benchmark error: {type(exc).__name__}: {exc}", problems=["benchmark error"]
        )


def cell(text: str, limit: int | None = None, tmp: Path | None = None, number: int = 0) -> str:
    """One table cell: one line, temp paths shortened (the case's folder dropped, the temp
    folder as TMP), cut to `limit` characters, markdown escaped."""
    text = " ".join(str(text).split())
    if tmp is not None:
        text = text.replace(f"{tmp}/cases/{number:03d}/", "").replace(str(tmp), "TMP")
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    for char, escaped in (("|", "\\|"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, escaped)
    return text


def outcome_text(outcome: Outcome, tmp: Path, number: int = 0) -> str:
    if outcome.skipped:
        return f"skipped: {outcome.skipped}"
    text = "timed out" if outcome.rc is None and not outcome.message else f"exit {outcome.rc}"
    if outcome.message:
        text += f": {cell(outcome.message, 120, tmp, number)}"
    if outcome.note:
        text += f" ({cell(outcome.note, 160, tmp, number)})"
    return text


def verdict_text(outcome: Outcome, tmp: Path, number: int = 0) -> str:
    verdict = outcome.verdict
    if verdict != "FAIL":
        return verdict
    reasons = list(outcome.problems)
    if outcome.lost:
        reasons.append("lost or changed: " + ", ".join(Path(p).name for p in outcome.lost[:3]))
    return f"FAIL: {cell('; '.join(dict.fromkeys(reasons)), 160, tmp, number)}"


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip()


def write_report(path: Path, rows: Sequence[Row], tmp: Path, seconds: float) -> None:
    counts = {v: sum(r.outcome.verdict == v for r in rows) for v in ("ok", "FAIL", "skipped")}
    dirty = git("status", "--porcelain", "--", "psa_core", "workflow", "Snakefile")
    commit = git("rev-parse", "--short", "HEAD") + (
        " (with uncommitted changes to psa_core/ or workflow/)" if dirty else ""
    )
    lines = [
        "# Bad inputs and faults",
        "",
        "Issue 15: every user mistake must end in one line that names the file, line or key "
        "at fault, never a traceback, and no fault may lose data. `benchmarks/bad_inputs.py` "
        "builds a tiny dataset, a CAM network and a segmentation model folder (`tiny` "
        "backbone, one epoch) in a temp folder, then runs each case below as a user would: "
        "`python -m psa_core ...`, or `python -m snakemake --snakefile <repo>/Snakefile` in a "
        "folder of its own (a dry run, `-n`, for the config cases: a bad config must be refused "
        "before any job is planned). It classifies each outcome by itself: the exit code, a "
        "traceback in the output, whether the message is one line naming what it must name, "
        "whether accepted inputs are read right (decoded pixel values, names), and whether any "
        "input, or a finished artifact a failed or killed job could touch, changed "
        "(SHA-256 before and after).",
        "",
        f"- Commit: `{commit}`; run {datetime.datetime.now():%Y-%m-%d %H:%M}, "
        f"{len(rows)} cases in {seconds / 60:.1f} min on {os.cpu_count()} CPU cores"
        f"{' as root' if os.geteuid() == 0 else ''}.",
        f"- Result: **{counts['ok']} ok, {counts['FAIL']} FAIL, {counts['skipped']} skipped**.",
        "- Rerun: `python benchmarks/bad_inputs.py` (writes this file and exits 1 when a case "
        "fails; `--only WORD` runs the cases whose group or name holds WORD without writing "
        "it; `--keep` keeps the temp folder). Paths in messages are shown relative to the "
        "case's own folder, or under `TMP/`, the temp folder.",
        "",
        "| # | case | command / stage | expected | outcome | traceback? | data lost? | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    group = None
    for row in rows:
        if row.case.group != group:
            group = row.case.group
            lines.append(f"| | **{group}** | | | | | | |")
        o = row.outcome
        skipped = bool(o.skipped)
        lines.append(
            f"| {row.number} | {row.case.name} | {row.case.command} | "
            f"{cell(row.case.expected)} | {outcome_text(o, tmp, row.number)} | "
            f"{'—' if skipped else ('yes' if o.traceback else 'no')} | "
            f"{'—' if skipped else ('yes' if o.lost else 'no')} | {verdict_text(o, tmp, row.number)} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", help="run only the cases whose group or name holds this (no report)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bad_inputs.md")
    args = parser.parse_args(argv)
    order = {g: i for i, g in enumerate(GROUPS)}
    cases = sorted(CASES, key=lambda c: order[c.group])  # stable: definition order in a group
    numbered = list(enumerate(cases, start=1))
    if args.only:
        numbered = [
            (n, c) for n, c in numbered if args.only.lower() in f"{c.group}: {c.name}".lower()
        ]
    tmp = Path(tempfile.mkdtemp(prefix="psa-bad-inputs-"))
    world = World(tmp)
    rows = []
    start = time.perf_counter()
    try:
        for number, item in numbered:
            began = time.perf_counter()
            outcome = run_case(world, item, tmp / "cases" / f"{number:03d}")
            rows.append(Row(number, item, outcome, time.perf_counter() - began))
            print(
                f"{number:3d} {outcome.verdict:7s} {rows[-1].seconds:5.1f}s  {item.group}: "
                f"{item.name} -> {outcome_text(outcome, tmp, number)[:150]}"
                + (
                    f"\n            {verdict_text(outcome, tmp, number)}"
                    if outcome.verdict == "FAIL"
                    else ""
                ),
                flush=True,
            )
    finally:
        if args.keep:
            print(f"temp folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - start
    if not args.only:
        write_report(args.out, rows, tmp, elapsed)
    counts = {v: sum(r.outcome.verdict == v for r in rows) for v in ("ok", "FAIL", "skipped")}
    print(
        f"bad inputs: {len(rows)} cases, {counts['ok']} ok, {counts['FAIL']} FAIL, "
        f"{counts['skipped']} skipped in {elapsed / 60:.1f} min"
        + ("" if args.only else f"; table in {args.out}")
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
