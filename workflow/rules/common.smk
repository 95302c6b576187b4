# Helpers shared by every stage: config validation, paths, shard lists, job settings.
import functools
import os
import sys
from pathlib import Path

from psa_core import settings as psa_settings
from psa_core.data import (
    gt_mask_path,
    image_list_path,
    num_shards,
    read_image_list,
    shard_slice,
)
from psa_core.data.coco import cached_split_listing
from psa_core.data.sheet import read_sheet
from psa_core.errors import PsaError
from psa_core.io import MAX_IMAGE_PIXELS_ENV


def check_config(config):
    """Stop with one line naming the first bad key (no traceback), then fill in the defaults.

    The schema and the defaults come from the dataclasses of psa_core/settings.py.
    """
    typed = psa_settings.typed_strings(config)  # --config 'cam={epochs: 3}' gives '3'
    config.clear()
    config.update(typed)
    errors = psa_settings.config_errors(config)
    if errors:
        sys.exit(
            f"config: {errors[0]}; fix it in config.yaml or --config "
            "(every key, its default and allowed values: psa config-schema)"
        )
    try:
        complete = psa_settings.complete_config(config)
    except PsaError as exc:
        sys.exit(f"config: {str(exc).removeprefix('settings: ')}; fix it in config.yaml")
    config.clear()
    config.update(complete)
    checkout, root = Path(workflow.basedir), config["dataset"]["root"]
    if where := psa_settings.output_dir_error(config["output_dir"], Path.cwd(), checkout, root):
        sys.exit(f"config: key 'output_dir': {where}; fix it in config.yaml or --config")
    if config["dataset"]["val_split"] == config["dataset"]["train_split"]:
        sys.exit(
            "config: key 'dataset.val_split': equals dataset.train_split; validate on held-out "
            "images or set it to null"
        )


check_config(config)

# The pixel limit of psa_core.io travels to the jobs in their environment, not
# as a param: it is a guard, not a setting of any result, so raising it for a
# genuine large image must not rerun a single job.
os.environ[MAX_IMAGE_PIXELS_ENV] = str(config["max_image_pixels"])

OUT = Path(config["output_dir"])
DATASET = config["dataset"]
KIND = DATASET["kind"]
SYNTHETIC = KIND == "synthetic"
TRAIN_SPLIT = DATASET["train_split"]
EVAL_SPLITS = DATASET["eval_splits"]
VAL_SPLIT = DATASET["val_split"]
EXTERNAL_CAMS = config["cam"]["source"] == "external"


def dataset_root():
    """The folder the dataset's paths are relative to (`--root` of every job)."""
    if SYNTHETIC:
        return OUT / "synthetic"
    if KIND == "sheet" and not DATASET["root"]:
        if not DATASET["sheet"]:
            sys.exit("config: key 'dataset.sheet': kind sheet needs the sample sheet; set it")
        return Path(DATASET["sheet"]).parent  # paths relative to the sheet's own folder
    if not DATASET["root"]:
        sys.exit(f"config: key 'dataset.root': kind {KIND} needs the dataset folder; set it")
    return Path(DATASET["root"])


DATA_ROOT = dataset_root()


def out(pattern):
    """A path under output_dir; `pattern` may hold {wildcards}."""
    return str(OUT / pattern)


def dataset_input(wildcards=None):
    """The dataset as an input: the generated folder, or nothing for the other kinds.

    A VOC split's list file is an input of its own `index_split` job only
    (`split_list`); the per-shard index jobs follow their shard's names as a
    param (`shard_names`), so a longer list reruns only the shards it changes.
    """
    if SYNTHETIC:
        return str(DATA_ROOT)
    return []


def shard_dataset_input(wildcards):
    """`index_shard`'s inputs: the generated folder, a COCO split's converted sheet and
    masks, or nothing (a VOC split's or a sample sheet's shard follows its names and rows
    as params)."""
    if SYNTHETIC:
        return {"dataset": str(DATA_ROOT)}
    if KIND == "coco":
        return coco_input(wildcards)
    return {}


def split_list(wildcards):
    """`index_split`'s input: the generated folder, the job's own VOC split list, or the
    COCO split's converted sheet; nothing for a sample sheet (its rows are a param)."""
    if SYNTHETIC:
        return str(DATA_ROOT)
    if KIND == "sheet":
        return []
    if KIND == "coco":
        return list(coco_input(wildcards).values())
    try:
        return str(image_list_path(DATA_ROOT, wildcards.split))
    except PsaError as exc:
        sys.exit(str(exc))


def all_splits():
    extra = [VAL_SPLIT] if VAL_SPLIT else []
    return list(dict.fromkeys([TRAIN_SPLIT, *EVAL_SPLITS, *extra]))


def split_size(split):
    """Number of images in a split, known when the DAG is built."""
    if SYNTHETIC:
        sizes = {"train": config["synthetic"]["num_train"], "val": config["synthetic"]["num_val"]}
        if split not in sizes:
            sys.exit(
                f"config: key 'dataset.eval_splits': the synthetic dataset has no split "
                f"'{split}'; use train and/or val"
            )
        return sizes[split]
    return len(split_names(split))


@functools.cache
def sample_sheet():
    """The sample sheet of kind sheet, checked row by row (read once per DAG build)."""
    if not DATASET["sheet"]:
        sys.exit("config: key 'dataset.sheet': kind sheet needs the sample sheet; set it")
    try:
        return read_sheet(DATASET["sheet"], DATASET["classes"], used_splits=all_splits())
    except PsaError as exc:
        sys.exit(str(exc))


def coco_annotations(split):
    """A COCO split's annotation file."""
    return DATA_ROOT / DATASET["coco_annotations"].format(split=split)


@functools.cache
def coco_listing(split):
    """A COCO split's listing (names, whether it has masks, class names), cached beside the
    run's artifacts so that a plan parses each annotation file once."""
    try:
        return cached_split_listing(coco_annotations(split), OUT / "coco" / f"{split}.listing.json")
    except PsaError as exc:
        sys.exit(str(exc))


def coco_input(wildcards):
    """What a COCO split's index jobs read: the split's converted sheet and masks."""
    return {
        "sheet": out(f"coco/{wildcards.split}/sheet.tsv"),
        "masks": out(f"coco/{wildcards.split}/masks"),
    }


def index_sheet(wildcards):
    """The `--sheet` option of an index job: the sample sheet, a COCO split's converted
    sheet, or nothing (VOC layout)."""
    if KIND == "sheet":
        return ["--sheet", DATASET["sheet"]]
    if KIND == "coco":
        return ["--sheet", out(f"coco/{wildcards.split}/sheet.tsv")]
    return []


@functools.cache
def split_names(split):
    """The image names of a split, in list order (read once per DAG build)."""
    if KIND == "sheet":
        return tuple(sample_sheet().names(split))
    if KIND == "coco":
        return tuple(coco_listing(split)[0])
    try:
        return tuple(read_image_list(DATA_ROOT, split))
    except PsaError as exc:
        sys.exit(str(exc))


@functools.cache
def split_has_masks(split):
    """Whether any image of a split has a ground-truth mask: only those splits are scored."""
    if SYNTHETIC:
        return True
    if KIND == "sheet":
        return sample_sheet().has_masks(split)
    if KIND == "coco":
        return coco_listing(split)[1]
    return any(gt_mask_path(DATA_ROOT, name) is not None for name in split_names(split))


def dataset_classes():
    """The class names when the dataset itself gives them (sheet: its tags, sorted; coco:
    the training split's categories by id), else None (config or the VOC root decides)."""
    if KIND == "sheet":
        return list(sample_sheet().classes)
    if KIND == "coco":
        return list(coco_listing(TRAIN_SPLIT)[2])
    return None


def shard_names(wildcards):
    """The image names of the job's shard, as a param of `index_shard`.

    Snakemake reruns a job whose params changed: a shard whose names changed
    is indexed again (and what depends on it reruns), the others stay. The
    synthetic dataset's names exist only once it is generated; there the
    generated folder is the input instead, and the param is empty.
    """
    if SYNTHETIC:
        return []
    names = split_names(wildcards.split)
    try:
        return shard_slice(names, DATASET["shard_size"], int(wildcards.shard))
    except PsaError as exc:
        sys.exit(f"split {wildcards.split}: {exc}")


@functools.cache
def sheet_row_params():
    """Name -> its sample-sheet row as a param value (built once per DAG build)."""
    return {
        row.name: [row.name, row.image, ";".join(row.tags), row.mask or ""]
        for row in sample_sheet().rows
    }


def sheet_rows(names):
    """A sample sheet's rows of `names`, as a param: a row's change reruns its index job."""
    if KIND != "sheet":
        return []
    rows = sheet_row_params()
    return [rows[name] for name in names]


def shard_rows(wildcards):
    """`index_shard`'s sheet rows (`sheet_rows`)."""
    return sheet_rows(shard_names(wildcards))


def split_rows(wildcards):
    """`index_split`'s sheet rows (`sheet_rows`)."""
    return sheet_rows(split_names(wildcards.split)) if KIND == "sheet" else []


def shard_ids(split):
    """Zero-padded shard numbers of a split (shard_size images each)."""
    return [f"{i:03d}" for i in range(num_shards(split_size(split), DATASET["shard_size"]))]


INIT_FROM_CAM = "cam"
"""init_weights value of affinity / segmentation: start from the trained CAM network's backbone."""


def stage_init_path(section):
    """The initial weights file of a training section (the CAM weights for "cam"), or None."""
    init = config[section]["init_weights"]
    if init == INIT_FROM_CAM:
        return out("cam/weights.pt")
    return init


def stage_init_weights(section):
    """An input function: the section's initial weights as an input, or nothing."""

    def init_weights(wildcards):
        path = stage_init_path(section)
        return [path] if path else []

    return init_weights


def init_option(wildcards, input):
    """The --init option of a training command for its `init` input, or nothing."""
    return ["--init", input.init] if input.init else []


def split_shards(pattern, split):
    """Every shard of `split` for a path pattern with {split} and {shard}."""
    return expand(out(pattern), split=split, shard=shard_ids(split))


def shards_of(pattern):
    """An input function: every shard of the job's {split} for `pattern`."""

    def shards(wildcards):
        return split_shards(pattern, wildcards.split)

    return shards


cam_shards = shards_of("cam/{split}/shard-{shard}.h5")
crf_shards = shards_of("crf/{split}/shard-{shard}.h5")
walk_shards = shards_of("rw/{split}/shard-{shard}.h5")
affinity_shards = shards_of("rw/{split}/affinity-{shard}.h5")


def classifier_input(wildcards):
    """`summarize`'s CAM classifier inputs (its training log and its splits' labels), or
    nothing when the CAMs come from another method."""
    if EXTERNAL_CAMS:
        return {}
    files = {
        "cam_log": out("cam/train_log.csv"),
        "train_labels": out(f"index/{TRAIN_SPLIT}/labels.json"),
    }
    if VAL_SPLIT is not None:
        files["val_labels"] = out(f"index/{VAL_SPLIT}/labels.json")
    return files


def summary_options(wildcards, input):
    """`psa summarize`'s options: the scored splits with their results, the evaluated
    splits that have no ground truth, and the CAM classifier's log and labels."""
    options = []
    if "cam_log" in input.keys():
        options += ["--cam-log", input.cam_log, "--train-split", TRAIN_SPLIT]
        options += ["--train-labels", input.train_labels]
    if "val_labels" in input.keys():
        options += ["--val-labels", input.val_labels]
    for flag, values in (
        ("--splits", SCORED_SPLITS),
        ("--no-ground-truth", UNSCORED_SPLITS),
        ("--cam", input.cam),
        ("--crf", input.crf),
        ("--walk", input.walk),
        ("--seg", input.seg),
        ("--changes", input.changes),
    ):
        if values:
            options += [flag, *values]
    return options


def external_cam_files(wildcards):
    """An `external_cams` job's inputs: the NAME.npz file of every image of its shard (a
    changed file reruns its shard), or the folder while the synthetic names are unknown."""
    folder = Path(config["cam"]["external_dir"])
    if SYNTHETIC:
        return {"external": str(folder)}
    files = [folder / f"{name}.npz" for name in shard_names(wildcards)]
    missing = [path for path in files if not path.is_file()]
    if missing:
        sys.exit(
            f"{missing[0]}: CAM file not found ({len(missing)} of shard {wildcards.shard} of "
            f"split {wildcards.split} missing); export the CAMs of every image of the run "
            "into cam.external_dir"
        )
    return {"external": [str(path) for path in files]}


def val_index(wildcards):
    """The validation split's index files, when there is a validation split."""
    if VAL_SPLIT is None:
        return {}
    return {
        "val_images": out(f"index/{VAL_SPLIT}/images.txt"),
        "val_labels": out(f"index/{VAL_SPLIT}/labels.json"),
    }


def val_options(wildcards, input):
    """The --val-* options of `psa train-cam` for the inputs of `val_index`."""
    if "val_images" not in input.keys():
        return []
    return ["--val-images", input.val_images, "--val-labels", input.val_labels]


RUN = ":device,amp"
"""The run keys of an inference job."""
TRAIN_RUN = ":device,amp,seed"
"""The run keys of a training job."""


def job_settings(*picks):
    """A job's settings param: the sections it reads, as one JSON value (`psa --settings`).

    Snakemake reruns a job whose params changed, so a job reruns exactly when
    a value it reads changes (psa_core.settings.job_settings has the picks).
    """
    return psa_settings.job_settings(config, *picks)


def model_settings():
    """The package_seg_model job's settings: what the segmentation model reads, and every
    upstream setting that made it, recorded in model.json."""
    upstream = [
        "dataset:kind,root,classes,train_split,max_side",
        "model",
        ":seed,amp",
        "cam",
        "cam.infer",
        "crf:-workers",
        "affinity",
        "random_walk",
        "segmentation",
        "segmentation.infer:scales,flip,crf",
    ]
    return job_settings(*upstream, *(["synthetic"] if SYNTHETIC else []))


if config["cam"]["init_weights"] == INIT_FROM_CAM:
    sys.exit(
        "config: key 'cam.init_weights': 'cam' names the CAM network itself; use a file or null"
    )
if EXTERNAL_CAMS:
    if not config["cam"]["external_dir"]:
        sys.exit(
            "config: key 'cam.external_dir': cam.source external reads the CAMs from this "
            "folder of NAME.npz files; set it"
        )
    for _section in ("affinity", "segmentation"):
        if config[_section]["init_weights"] == INIT_FROM_CAM:
            sys.exit(
                f"config: key '{_section}.init_weights': with cam.source external no CAM "
                "network is trained to start from; use a weights file or null"
            )
for _split in all_splits():
    split_size(_split)  # fail early, with one line, on an unknown split
if KIND in ("sheet", "coco") and not DATASET["classes"]:
    config["dataset"]["classes"] = dataset_classes()  # every job then reads the same list
SCORED_SPLITS = [split for split in EVAL_SPLITS if split_has_masks(split)]
"""The evaluated splits that have ground truth: only they get evaluation jobs."""
UNSCORED_SPLITS = [split for split in EVAL_SPLITS if split not in SCORED_SPLITS]
