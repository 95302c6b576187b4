# Helpers shared by every stage: config validation, paths, shard lists, job settings.
import functools
import os
import sys
from pathlib import Path

from psa_core import settings as psa_settings
from psa_core.data import image_list_path, num_shards, read_image_list, shard_slice
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
SYNTHETIC = DATASET["kind"] == "synthetic"
DATA_ROOT = OUT / "synthetic" if SYNTHETIC else Path(DATASET["root"] or "")
TRAIN_SPLIT = DATASET["train_split"]
EVAL_SPLITS = DATASET["eval_splits"]
VAL_SPLIT = DATASET["val_split"]


def out(pattern):
    """A path under output_dir; `pattern` may hold {wildcards}."""
    return str(OUT / pattern)


def dataset_input(wildcards=None):
    """The dataset as an input: the generated folder, or nothing for kind voc.

    A VOC split's list file is an input of its own `index_split` job only
    (`split_list`); the per-shard index jobs follow their shard's names as a
    param (`shard_names`), so a longer list reruns only the shards it changes.
    """
    if SYNTHETIC:
        return str(DATA_ROOT)
    return []


def split_list(wildcards):
    """`index_split`'s input: the generated folder, or the job's own split list."""
    if SYNTHETIC:
        return str(DATA_ROOT)
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
def split_names(split):
    """The image names of a VOC split, in list order (read once per DAG build)."""
    if not DATASET["root"]:
        sys.exit("config: key 'dataset.root': kind voc needs the dataset folder; set dataset.root")
    try:
        return tuple(read_image_list(DATA_ROOT, split))
    except PsaError as exc:
        sys.exit(str(exc))


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
        sys.exit(f"{image_list_path(DATA_ROOT, wildcards.split)}: {exc}")


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
for _split in all_splits():
    split_size(_split)  # fail early, with one line, on an unknown split
