"""Helpers shared by the stage drivers: the groups of files several drivers take, the
keywords of a training run, which shard or mask folder holds an image, and whether a
shard belongs to the run's dataset."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from psa_core import io
from psa_core.errors import PsaError
from psa_core.settings import ModelSettings, RunSettings

# -- groups of files ------------------------------------------------------------------
# A driver parameter typed with one of these takes its fields as `psa` options.


def file_option(help_: str, **default: Any) -> Any:
    """A field of a group of files: its `psa` option's help (and its default, if any)."""
    return dataclasses.field(metadata={"help": help_}, **default)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageList:
    """The dataset folder and a list of its images."""

    root: Path = file_option("dataset folder (VOC layout)")
    images: Path = file_option("image list from `psa index`")

    def names(self) -> list[str]:
        """The listed image names, in list order."""
        from psa_core.data import listed_names

        return listed_names(self.images)

    def files(self) -> dict[str, Any]:
        """Name -> its `psa_core.data.ImageFiles` (image, ground-truth mask or None), in
        list order: the one place a stage learns where an image and its mask are."""
        from psa_core.data import listed_files

        return listed_files(self.images, self.root)

    def image_files(self) -> dict[str, Path]:
        """Name -> its image file, in list order."""
        return {name: files.image for name, files in self.files().items()}

    def ground_truth(self) -> dict[str, Path]:
        """Name -> its ground-truth mask, for the listed images that have one (list order).

        An evaluation scores these and records how many of the listed images
        they are (`scored_counts`). PsaError when no listed image has a mask:
        the workflow evaluates only splits with masks."""
        files = self.files()
        masks = {name: f.mask for name, f in files.items() if f.mask is not None}
        if not masks:
            raise PsaError(
                f"{self.images}: no listed image has a ground-truth mask; evaluate a split "
                "with masks (add masks, or leave the split out of dataset.eval_splits)"
            )
        logging.getLogger("psa").info(
            "%d of the %d listed images have a ground-truth mask: scoring those",
            len(masks), len(files),
        )  # fmt: skip
        return masks

    def scored_counts(self, scored: int) -> dict[str, int]:
        """What an evaluation's metrics record of its images: `num_images` scored (those
        with a ground-truth mask) and `listed_images` of the split."""
        return {"num_images": scored, "listed_images": len(self.names())}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelledImages(ImageList):
    """The dataset folder, a list of its images and their labels."""

    labels: Path = file_option("labels from `psa index`")

    def labelled_shard(
        self, shard: Shard
    ) -> tuple[list[str], dict[str, Any], dict[str, Path], list[str]]:
        """(classes, name -> labels, name -> image file, the names of `shard` of the list
        (`psa_core.data.select_shard`: the whole list without one)), each name of the
        shard checked to have labels: what a per-shard CAM job reads."""
        from psa_core.data import check_names, read_labels, select_shard

        classes, label_map = read_labels(self.labels)
        image_files = self.image_files()
        try:
            names = select_shard(list(image_files), shard.shard, shard.shard_size)
        except PsaError as exc:
            raise PsaError(f"{self.images}: {exc}") from None
        check_names(names, label_map, str(self.images))
        return classes, label_map, image_files, names

    def classes(self, *shards: Path) -> list[str]:
        """The class names of the labels file, each of `shards` checked to be made for them."""
        from psa_core.data import read_labels

        classes, _ = read_labels(self.labels)
        for shard in shards:
            check_shard_classes(shard, classes, self.labels)
        return classes


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shard:
    """One shard of an image list (both or neither; neither = the whole list)."""

    shard: int | None = file_option("only this shard of the list (0-based)", default=None)
    shard_size: int | None = file_option("images per shard (with --shard)", default=None)

    def where(self, images: Path) -> str:
        """The image list's name, and the shard's number when there is one (for the log)."""
        return images.name if self.shard is None else f"{images.name}, shard {self.shard}"

    def attrs(self) -> dict[str, int]:
        """What a shard file records of the cut: nothing for the whole list."""
        return {} if self.shard is None else dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reports:
    """The two reports of an evaluation."""

    out_json: Path = file_option("metrics to write (.json)")
    out_csv: Path = file_option("per-class table to write (.csv)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingFiles:
    """What a resumable training reads and writes besides its data."""

    init: Path | None = file_option("initial weights (backbone only)", default=None)
    checkpoint: Path = file_option("resume checkpoint path")
    restart_on_change: bool = file_option(
        "start over when the checkpoint has other settings (default: refuse)", default=False
    )
    out_log: Path = file_option("training log to write (.csv)")
    out: Path = file_option("trained weights to write (.pt)")


def _is_output(name: str) -> bool:
    return name in ("out", "checkpoint") or name.startswith("out_")


def output_paths(arguments: Mapping[str, Any]) -> list[Path]:
    """What a driver writes, from its keywords: every `out` / `out_*` path, also inside a
    group of files, and a training's `checkpoint`."""
    return [path for name, path in _paths(arguments) if _is_output(name)]


def _paths(arguments: Mapping[str, Any]) -> Iterator[tuple[str, Path]]:
    """(name, path) of every path among a driver's keywords, groups of files opened up."""
    for name, value in arguments.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _paths({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
        elif isinstance(value, Path):
            yield name, value
        elif isinstance(value, (list, tuple)):
            yield from ((name, v) for v in value if isinstance(v, Path))


def check_outputs_spare_inputs(arguments: Mapping[str, Any]) -> None:
    """PsaError unless every output of a driver call leaves its inputs alone: an output
    may not be an input, nor a folder that holds one (a folder output is replaced
    whole), nor lie inside the dataset folder (`root`), whose masks and lists a
    replaced folder could take with it."""
    outputs = {path.resolve(): path for path in output_paths(arguments)}
    inputs = [(name, path) for name, path in _paths(arguments) if not _is_output(name)]
    for resolved, out in outputs.items():
        for name, path in inputs:
            flag = f"--{name.replace('_', '-')}"
            if resolved == path.resolve():
                raise PsaError(f"{out}: is also an input ({flag}); write the output elsewhere")
            if resolved in path.resolve().parents:
                raise PsaError(
                    f"{out}: holds the input {path} ({flag}), which writing it would replace; "
                    "write the output elsewhere"
                )
            if name == "root" and resolved.is_relative_to(path.resolve()):
                raise PsaError(
                    f"{out}: is inside the dataset folder {path} ({flag}); write outputs "
                    "outside it (an output_dir outside dataset.root)"
                )


@contextlib.contextmanager
def outputs_held(arguments: Mapping[str, Any], fills_folders: bool = False) -> Iterator[None]:
    """Check that the outputs of a driver call spare its inputs, then hold the OS lock of
    every output (`io.output_lock`) for the block: one job per output at a time, whatever
    happened to Snakemake's own locks. With the locks held, what a killed run of the
    same job left beside its outputs is removed.

    A driver that writes files into its output folder rather than replacing it
    (`fills_folders`: `psa predict`, whose --out may be its images' folder)
    checks the names it writes itself."""
    if not fills_folders:
        check_outputs_spare_inputs(arguments)
    with contextlib.ExitStack() as held:
        for path in output_paths(arguments):
            held.enter_context(io.output_lock(path))
            io.remove_stale_temporaries(path)
        yield


@contextlib.contextmanager
def timed(what: str, count: int) -> Iterator[None]:
    """Log how long the block took for `count` images, and their rate."""
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    logging.getLogger("psa").info(
        "%s: %d images in %.1f s (%.2f images/s)", what, count, elapsed, count / max(elapsed, 1e-9)
    )


def model_to_train(
    head: str, num_classes: int, files: TrainingFiles, model: ModelSettings, run: RunSettings,
    **options: Any,
) -> Any:  # fmt: skip
    """A network to train: new layers seeded by the run's seed, the backbone from the
    initial weights if any (`psa_core.models.create_model`); `options` go to the head."""
    from psa_core.models import create_model

    return create_model(
        model.backbone, head, num_classes, init_weights=files.init, seed=run.seed, **options
    )


def loop_keywords(files: TrainingFiles, run: RunSettings) -> dict[str, Any]:
    """The keywords of `psa_core.training.train` (through a stage's `fit_*`) for a run."""
    return {
        "seed": run.seed,
        "device": run.device,
        "amp_dtype": run.amp,
        "restart_on_change": files.restart_on_change,
        "out_weights": files.out,
        "checkpoint_path": files.checkpoint,
        "log_csv": files.out_log,
        "config": {"init": str(files.init) if files.init else None},
    }


# -- shards ------------------------------------------------------------------------


def _shard_classes(path: Path) -> list[str] | None:
    classes = io.read_score_shard_attrs(path).get("classes")
    return json.loads(classes) if isinstance(classes, str) else classes


def check_shard_classes(path: Path, classes: Sequence[str], labels_path: Path) -> None:
    """PsaError unless the shard at `path` was made for the class list of `labels_path`."""
    stored = _shard_classes(path)
    if stored != list(classes):
        raise PsaError(
            f"{path}: made for classes {stored}, but {labels_path} has {list(classes)}; it comes "
            "from another dataset or class list: delete it and rerun the stage that makes it"
        )


def shard_index(shards: Sequence[Path], names: Sequence[str], what: str) -> dict[str, Path]:
    """Image name → the shard holding it; PsaError naming the first listed image none holds."""
    where: dict[str, Path] = {}
    for shard in shards:
        for name in io.read_score_shard_names(shard):
            where.setdefault(name, Path(shard))
    missing = [n for n in names if n not in where]
    if missing:
        raise PsaError(
            f"{what} shards lack {len(missing)} listed image(s) (first: '{missing[0]}'); "
            "rerun the stage that makes them for this image list"
        )
    return where


def mask_files(folders: Sequence[Path], names: Sequence[str], rule: str) -> dict[str, Path]:
    """Image name → its NAME.png in the mask folders of `rule`; PsaError naming the first
    listed image that has none."""
    files = {p.stem: p for folder in folders for p in Path(folder).glob("*.png")}
    missing = [n for n in names if n not in files]
    if missing:
        raise PsaError(
            f"the {rule} mask folders lack {len(missing)} listed image(s) (first: "
            f"'{missing[0]}'); rerun {rule} for this split"
        )
    return files


def listed_shard_names(shard: Path, images: Path) -> list[str]:
    """The image names a CAM shard holds, each checked to be in the image list `images`."""
    from psa_core.data import listed_names

    listed = set(listed_names(images))
    names = io.read_score_shard_names(shard)
    foreign = [n for n in names if n not in listed]
    if foreign:
        raise PsaError(
            f"{shard}: holds image '{foreign[0]}', which is not in {images}; the shard comes from "
            "another dataset: delete it and rerun infer_cam"
        )
    return names
