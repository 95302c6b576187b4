"""The `psa` console script (also `python -m psa_core`): one subcommand a stage step.

The CLI only parses and dispatches: each subcommand is a driver function of
`psa_core.stages`, and its options are generated from the driver's signature
(`COMMANDS`): files as plain options, settings sections as an option per
field (`--lr`, `--crop-size`, …, grouped by section in `--help`, with their
defaults and descriptions, all from `psa_core.settings`). `--settings` takes
the same values as JSON or as a JSON / YAML file shaped like config.yaml.
Precedence: published defaults < `--settings` < options.

It never reads config.yaml by itself: the Snakemake rules pass each job's
sections as one JSON value. User errors (`PsaError`) print one line and exit
2, a failed read or write (`OSError`: a full disk, a read-only folder) one line
and exit 1; an interrupted training exits 128 + signal. A job holds an OS lock
on each of its outputs while it runs (`psa_core.stages.common.outputs_held`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import inspect
import logging
import os
import re
import signal
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from psa_core import __version__, settings
from psa_core.errors import PsaError, TrainingInterrupted
from psa_core.stages import (
    affinity,
    cam,
    coco,
    common,
    config,
    data,
    external_cams,
    random_walk,
    report,
    segmentation,
)

EXIT_USER_ERROR = 2
EXIT_SYSTEM_ERROR = 1
EXIT_INTERRUPTED = 130


COMMANDS: dict[str, Callable[..., None]] = {
    "config-schema": config.print_schema,
    "synth": data.synth,
    "index": data.index,
    "coco-split": coco.coco_split,
    "train-cam": cam.train_cam,
    "infer-cam": cam.infer_cam,
    "evaluate-cam": cam.evaluate_cam,
    "external-cams": external_cams.external_cams,
    "export-cams": external_cams.export_cams,
    "import-cams": external_cams.import_cams,
    "crf-labels": affinity.crf_labels,
    "evaluate-crf-labels": affinity.evaluate_crf_labels,
    "train-affinity": affinity.train_affinity,
    "random-walk": random_walk.random_walk_shard,
    "evaluate-random-walk": random_walk.evaluate_random_walk,
    "walk-changes": random_walk.walk_changes,
    "export-masks": random_walk.export_masks,
    "train-seg": segmentation.train_seg,
    "package-seg-model": segmentation.package_seg_model,
    "infer-seg": segmentation.infer_seg,
    "evaluate-seg": segmentation.evaluate_seg,
    "predict": segmentation.predict,
    "summarize": random_walk.summarize,
    "gallery": report.gallery,
}
"""Subcommand → its driver. Each driver's keyword parameters are its options:

- a settings section (a class of `psa_core.settings.SECTIONS`): an option per
  field (`Keys(...)` in `Annotated` picks some), and `--settings`;
- a group of files (a dataclass of `psa_core.stages.common`): an option per field;
- `Path`, `str`, `int | None`, `bool` and sequences of them: one option, its help
  from the driver's docstring (`Args:`).
"""

SECTION_PATHS = {cls: path for path, cls in settings.SECTIONS.items()}

_ARG_DOC = re.compile(r"^ {8}(\w+): (.+(?:\n {12,}.+)*)", re.M)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """How one driver parameter is read from the command line."""

    name: str
    kind: str  # "section", "overrides", "recorded", "group" or "value"
    type: Any
    path: str = ""  # the section, for "section" and "overrides"
    keys: tuple[str, ...] | None = None  # the section's keys offered, None = all


def parameters(driver: Callable[..., None]) -> list[Parameter]:
    """The driver's keyword parameters, classified from their annotations."""
    hints = typing.get_type_hints(driver, include_extras=True)
    found = []
    for name in inspect.signature(driver).parameters:
        hint, marks = hints[name], ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *marks = typing.get_args(hint)
        keys = next((m.names for m in marks if isinstance(m, settings.Keys)), None)
        override = next((m for m in marks if isinstance(m, settings.Overrides)), None)
        if override is not None:
            found.append(Parameter(name, "overrides", hint, override.path, keys))
        elif any(isinstance(m, settings.Recorded) for m in marks):
            found.append(Parameter(name, "recorded", hint))
        elif hint in SECTION_PATHS:
            found.append(Parameter(name, "section", hint, SECTION_PATHS[hint], keys))
        elif dataclasses.is_dataclass(hint):
            found.append(Parameter(name, "group", hint))
        else:
            found.append(Parameter(name, "value", hint))
    return found


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_kwargs(tp: Any, help_: str, default: Any = dataclasses.MISSING) -> dict[str, Any]:
    """argparse keywords of a file or value option of type `tp`."""
    optional = settings.is_optional(tp)
    base = typing.get_args(tp)[0] if optional else tp
    kwargs: dict[str, Any] = {"help": help_}
    if base is bool:
        return {**kwargs, "action": "store_true"}
    if typing.get_origin(base) in (Sequence, list, tuple):
        kwargs["nargs"] = "+"
        base = typing.get_args(base)[0]
    kwargs["type"] = base
    if optional or default is not dataclasses.MISSING:
        kwargs["default"] = None if default is dataclasses.MISSING else default
    else:
        kwargs["required"] = True
    return kwargs


def _arg_docs(driver: Callable[..., None]) -> dict[str, str]:
    """`name: help` of the driver docstring's Args section, joined to one line each."""
    doc = (driver.__doc__ or "").partition("Args:")[2]
    return {m[0]: " ".join(m[1].split()) for m in _ARG_DOC.findall(doc)}


def _summary(driver: Callable[..., None]) -> str:
    """The driver's docstring's first paragraph, less its "`psa name`: " prefix."""
    first = " ".join((driver.__doc__ or "").strip().split("\n\n")[0].split())
    return re.sub(r"^`psa [\w-]+`: ", "", first).rstrip(".")


def _option_kwargs(setting: settings.Setting, model_default: bool) -> dict[str, Any]:
    """argparse keywords of a setting's option (its type, arity, help with the default)."""
    group = settings.group_class(setting.type)
    base = typing.get_args(setting.type)[0] if settings.is_optional(setting.type) else setting.type
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
    nullable = ""
    if group is not None:
        names = [f.name for f in dataclasses.fields(group)]
        kwargs.update(type=float, nargs=len(names), metavar=tuple(n.upper() for n in names))
        shown = " ".join(str(v) for v in settings.as_dict(setting.default).values())
    elif base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        shown = str(setting.default)
    elif typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        kwargs.update(type=args[0], nargs=len(args) if fixed else "+")
        shown = " ".join(str(v) for v in setting.default) if setting.default else "none"
    elif settings.scalar_union(setting.type):
        kwargs["type"] = _first_of(settings.scalar_union(setting.type))
        shown = str(setting.default)
    elif settings.is_optional(setting.type):
        kwargs["type"] = _or_none(base)
        shown = str(setting.default)
        nullable = "; none for null"
    else:
        kwargs["type"] = base
        shown = str(setting.default)
    if group is None and base is not bool and "enum" not in setting.schema:
        kwargs["metavar"] = setting.name.upper()
    if "enum" in setting.schema:
        kwargs["choices"] = setting.schema["enum"]
    default = "the model's" if model_default else shown
    kwargs["help"] = f"{setting.description} (default: {default}{nullable})"
    return kwargs


def _first_of(kinds: Sequence[type]) -> Callable[[str], Any]:
    """An argparse type: `text` as the first of `kinds` that reads it (`int | str`: 2 or
    auto); the schema then checks the value."""

    def parse(text: str) -> Any:
        for kind in kinds:
            with contextlib.suppress(ValueError):
                return kind(text)
        raise ValueError(text)

    parse.__name__ = " or ".join(k.__name__ for k in kinds)
    return parse


def _or_none(base: type) -> Callable[[str], Any]:
    """An argparse type: `none` or `null` is None (a nullable setting), else `base(text)`."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else base(text)

    parse.__name__ = base.__name__  # argparse names the type in "invalid int value"
    return parse


def _dest(keyword: str, name: str) -> str:
    return f"settings__{keyword}__{name}"


def _add_section(parser: argparse.ArgumentParser, param: Parameter, add: Callable) -> None:
    group = parser.add_argument_group(f"{param.path or 'run'} settings")
    for setting in settings.fields(settings.SECTIONS[param.path]):
        if setting.cli and (param.keys is None or setting.name in param.keys):
            kwargs = _option_kwargs(setting, param.kind == "overrides")
            add(group, _flag(setting.name), dest=_dest(param.name, setting.name), **kwargs)


def _add_command(sub: Any, name: str, driver: Callable[..., None]) -> None:
    summary = _summary(driver)
    p = sub.add_parser(name, help=summary, description=summary)
    p.set_defaults(driver=driver)
    taken: set[str] = set()

    def add(target: Any, flag: str, **kwargs: Any) -> None:
        if flag in taken:
            raise ValueError(f"psa {name}: option {flag} comes from two parameters")
        taken.add(flag)
        target.add_argument(flag, **kwargs)

    docs = _arg_docs(driver)
    params = parameters(driver)
    for param in params:
        if param.kind == "value":
            add(
                p, _flag(param.name), dest=param.name, **_value_kwargs(param.type, docs[param.name])
            )
        elif param.kind == "group":
            types = typing.get_type_hints(param.type)
            for field in dataclasses.fields(param.type):
                kwargs = _value_kwargs(types[field.name], field.metadata["help"], field.default)
                add(p, _flag(field.name), dest=f"group__{param.name}__{field.name}", **kwargs)
    if any(param.kind in ("section", "overrides") for param in params):
        add(
            p,
            "--settings",
            metavar="JSON_OR_FILE",
            help="settings as a JSON object or a JSON / YAML file shaped like config.yaml "
            "(its other sections are ignored); the options below override it",
        )
        if any(param.name == "run" for param in params):
            add(
                p,
                "--threads",
                type=int,
                help="CPU threads of the job: torch's, and num_workers auto's count "
                "(default: torch's)",
            )
        for param in params:
            if param.kind in ("section", "overrides"):
                _add_section(p, param, add)


def build_parser() -> argparse.ArgumentParser:
    """The `psa` parser: one subcommand per `COMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog="psa",
        description="PSA / AffinityNet pipeline stages (the Snakemake rules call these).",
    )
    parser.add_argument("--version", action="version", version=f"psa_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, driver in COMMANDS.items():
        _add_command(sub, name, driver)
    return parser


def _given(options: Mapping[str, Any], keyword: str, path: str) -> dict[str, Any]:
    """The values of one section given as options, as plain config values."""
    prefix = _dest(keyword, "")
    cls = settings.SECTIONS[path]
    values = {}
    for dest, value in options.items():
        if not dest.startswith(prefix):
            continue
        name = dest[len(prefix) :]
        group = settings.group_class(settings.field_type(cls, name))
        if group is not None:
            names = [f.name for f in dataclasses.fields(group)]
            value = dict(zip(names, value, strict=True))
        values[name] = value
    return values


def driver_arguments(driver: Callable[..., None], options: Mapping[str, Any]) -> dict[str, Any]:
    """The driver's keywords from the parsed options: values as given, groups of files
    built, each section from defaults < --settings < options."""
    given = settings.read_settings(options.get("settings"))
    settings.check_top_level(given, "--settings")
    arguments: dict[str, Any] = {}
    for param in parameters(driver):
        if param.kind == "value":
            arguments[param.name] = options[param.name]
        elif param.kind == "group":
            prefix = f"group__{param.name}__"
            fields = {k[len(prefix) :]: v for k, v in options.items() if k.startswith(prefix)}
            arguments[param.name] = param.type(**fields)
        elif param.kind == "recorded":
            arguments[param.name] = given
        else:
            values = {**settings.section_values(given, param.path)}
            values.update(_given(options, param.name, param.path))
            section = settings.section_from(param.path, values)  # checked in either case
            arguments[param.name] = values if param.kind == "overrides" else section
    return arguments


# -- running a command ----------------------------------------------------------------


_OS_ERROR_FIXES = {
    errno.ENOSPC: "free disk space (or choose another output folder) and rerun; finished "
    "artifacts are untouched",
    errno.EDQUOT: "free space in your quota (or choose another output folder) and rerun",
    errno.EACCES: "choose a folder you may write to, or fix its permissions",
    errno.EPERM: "choose a folder you may write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "the path is a folder; give a file path",
    errno.ENOENT: "check the path",
}


def os_error_line(exc: OSError) -> str:
    """One line for a failed read or write: the file, what the system said, the fix."""
    what = exc.strerror or str(exc)
    where = f"{exc.filename}: " if exc.filename else ""
    fix = _OS_ERROR_FIXES.get(exc.errno, "check the path, its permissions and the free space")
    return f"{where}{what}; {fix}"


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class Terminated(BaseException):
    """Raised by the SIGTERM handler: unwinds the stage like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, then call the subcommand's driver with its files and settings as keywords."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if os.environ.get("SLURM_JOB_ID"):
        logging.getLogger("psa").info(
            "running as SLURM job %s on %s",
            os.environ["SLURM_JOB_ID"],
            os.environ.get("SLURMD_NODENAME", "?"),
        )
    options = vars(args)
    name, driver = options["command"], options["driver"]
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C: temporary outputs are
    # removed and worker pools terminated. Training installs its own handler.
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        keywords = driver_arguments(driver, options)
        _set_threads(options.get("threads"))
        with common.outputs_held(keywords, getattr(driver, "fills_folders", False)):
            driver(**keywords)
    except PsaError as exc:
        print(f"psa {name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a full disk, a read-only folder: the system's, not ours
        print(f"psa {name}: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except TrainingInterrupted as exc:
        print(f"psa {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated as exc:
        print(f"psa {name}: stopped by SIGTERM; no output was written", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"psa {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
