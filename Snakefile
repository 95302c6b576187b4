# PSA / AffinityNet (Ahn & Kwak, CVPR 2018) as a Snakemake workflow.
# Stages live in workflow/rules/<stage>.smk; each rule calls `psa <stage> ...`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    split=r"[A-Za-z0-9_-]+",
    shard=r"\d\d\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/affinity.smk"


rule all:
    default_target: True
    input:
        expand(out("cam/eval/{split}.json"), split=EVAL_SPLITS),
        expand(out("crf/eval/{split}.json"), split=EVAL_SPLITS),
        out("affinity/weights.pt"),
