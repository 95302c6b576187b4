# PSA / AffinityNet (Ahn & Kwak, CVPR 2018) as a Snakemake workflow.
# Stages live in workflow/rules/<stage>.smk; each rule calls `psa <stage> ...`.
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version

from psa_core.settings import config_file_error

min_version("9.0")

# Snakemake's own message for an empty or broken config file names no file.
if Path("config.yaml").is_file() and (problem := config_file_error("config.yaml")):
    sys.exit(f"config: {problem}")


configfile: "config.yaml"


# `python -m psa_core` imports the package from this checkout in every job:
# from any working directory, and inside conda environments (envs/psa.yaml)
# where the package itself is not installed.
# (Snakemake formats the prefix too, hence the doubled braces.)
# It replaces Snakemake's default prefix, so that one is restated first.
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    split=r"[A-Za-z0-9_-]+",
    shard=r"\d\d\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/affinity.smk"
include: "workflow/rules/random_walk.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.summarize.output,
        rules.export_masks.output,
        rules.package_seg_model.output.model,
        expand(out("report/gallery-{split}.png"), split=EVAL_SPLITS),


onsuccess:
    masks = Path(out("pseudo_masks"), "SegmentationClassAug")
    print(
        f"\nPSA pipeline done. Pseudo masks for a segmentation trainer: {masks} "
        f"(image list: {Path(out('pseudo_masks'), 'ImageSets', 'Segmentation', TRAIN_SPLIT)}.txt)\n"
        f"Segmentation model: {out('seg/model')} "
        f"(segment new images: psa predict --model {out('seg/model')} --images DIR --out DIR)\n"
        f"Summary (CAM -> CRF labels -> random walk -> segmentation network, per split): "
        f"{out('summary.csv')}\n"
        "Report with tables, plots and the gallery: snakemake --report report.html\n"
    )
