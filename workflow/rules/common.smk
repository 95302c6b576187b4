# Helpers shared by every stage: config validation, paths, shard lists.
import functools
import json
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.utils import validate

from psa_core.data import image_list_path, num_shards, read_image_list, shard_slice
from psa_core.defaults import JITTER_KEYS
from psa_core.errors import PsaError

SCHEMA = "../schemas/config.schema.yaml"


def check_config(config):
    """Stop with one line naming the first bad key (no traceback), then fill defaults."""
    schema = yaml.safe_load(Path(workflow.source_path(SCHEMA)).read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path)
    )
    if errors:
        error = errors[0]
        key = ".".join(str(p) for p in error.path) or "(top level)"
        sys.exit(
            f"config: key '{key}': {error.message}; fix it in config.yaml or --config "
            "(allowed values: workflow/schemas/config.schema.yaml)"
        )
    validate(config, SCHEMA)  # fills in the schema defaults
    ranges = {
        "synthetic.image_size": config["synthetic"]["image_size"],
        "cam.resize_long": config["cam"]["resize_long"],
        "crf.alpha_low, crf.alpha_high": (config["crf"]["alpha_low"], config["crf"]["alpha_high"]),
    }
    for key, (low, high) in ranges.items():
        if low > high:
            sys.exit(f"config: key '{key}': [{low}, {high}] has min > max; fix it in config.yaml")
    if config["dataset"]["val_split"] == config["dataset"]["train_split"]:
        sys.exit(
            "config: key 'dataset.val_split': equals dataset.train_split; validate on held-out "
            "images or set it to null"
        )


check_config(config)

OUT = Path(config["output_dir"])
DATASET = config["dataset"]
SYNTHETIC = DATASET["kind"] == "synthetic"
DATA_ROOT = OUT / "synthetic" if SYNTHETIC else Path(DATASET["root"] or "")
TRAIN_SPLIT = DATASET["train_split"]
EVAL_SPLITS = DATASET["eval_splits"]
BACKBONE = config["model"]["backbone"]
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


def classes_arg():
    """The --classes option of `psa index`, empty when the dataset decides."""
    return option("--classes", ",".join(DATASET["classes"] or []))


def init_weights(wildcards):
    """The initial weights file as an input (so a missing file stops the DAG), or nothing."""
    return [config["cam"]["init_weights"]] if config["cam"]["init_weights"] else []


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


def stage_init_option(section):
    """The --init option of a training command for the section."""
    return option("--init", stage_init_path(section))


def option(flag, value):
    """`flag value` for a command line, or nothing when value is empty/None."""
    return f"{flag} {value}" if value else ""


def spaced(values):
    """A list as space-separated command-line arguments."""
    return " ".join(str(v) for v in values)


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
        return ""
    return f"--val-images {input.val_images} --val-labels {input.val_labels}"


CRF = config["crf"]
AFF = config["affinity"]
RW = config["random_walk"]


def model_settings():
    """The settings that made the segmentation model, for its model.json (quoted JSON)."""
    upstream = {
        "dataset": {k: DATASET[k] for k in ("kind", "root", "classes", "train_split")},
        "model": config["model"],
        "seed": config["seed"],
        "amp": config["amp"],
        "cam": {k: v for k, v in config["cam"].items() if k != "evaluate"},
        "crf": {k: v for k, v in CRF.items() if k != "workers"},
        "affinity": AFF,
        "random_walk": {k: v for k, v in RW.items() if k != "evaluate"},
        "segmentation": {k: v for k, v in config["segmentation"].items() if k != "infer"},
    }
    if SYNTHETIC:
        upstream["synthetic"] = config["synthetic"]
    return shlex.quote(json.dumps({"pipeline": upstream}, sort_keys=True))


def flag(name, value):
    """`--name` or `--no-name` for a boolean option."""
    return f"--{name}" if value else f"--no-{name}"


for _split in all_splits():
    split_size(_split)  # fail early, with one line, on an unknown split
