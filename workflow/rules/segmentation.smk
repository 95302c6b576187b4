# Segmentation stage (docs/design.md §1.6): a DeepLab-LargeFOV-style network trained on
# the exported random-walk masks; its masks of the evaluation splits per shard,
# and their evaluation. The model folder (weights + model.json, its own job so that
# new inference defaults need no retraining) is what `psa predict` reads.


rule train_seg:
    input:
        init=stage_init_weights("segmentation"),
        masks=rules.export_masks.output.folder,
        dataset=dataset_input,
        images=out(f"index/{TRAIN_SPLIT}/images.txt"),
        labels=out(f"index/{TRAIN_SPLIT}/labels.json"),
    output:
        weights=out("seg/weights.pt"),
        log_csv=out("seg/train_log.csv"),
    log:
        out("logs/train_seg.log"),
    benchmark:
        out("benchmarks/train_seg.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 4
    params:
        settings=job_settings("model", "segmentation", TRAIN_RUN),
        root=DATA_ROOT,
        masks=out("pseudo_masks/SegmentationClassAug"),
        checkpoint=out("seg/train_checkpoint.pt"),
        init=init_option,
    shell:
        "exec python -m psa_core train-seg --settings {params.settings:q} --root {params.root:q}"
        " --images {input.images:q} --labels {input.labels:q} --masks {params.masks:q}"
        " {params.init:q} --threads {threads} --checkpoint {params.checkpoint:q}"
        " --restart-on-change --out-log {output.log_csv:q} --out {output.weights:q} > {log:q} 2>&1"


rule package_seg_model:
    input:
        weights=rules.train_seg.output.weights,
        labels=out(f"index/{TRAIN_SPLIT}/labels.json"),
    output:
        model=directory(out("seg/model")),
    log:
        out("logs/package_seg_model.log"),
    benchmark:
        out("benchmarks/package_seg_model.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        settings=model_settings(),
    shell:
        "exec python -m psa_core package-seg-model --settings {params.settings:q}"
        " --weights {input.weights:q} --labels {input.labels:q} --out {output.model:q}"
        " > {log:q} 2>&1"


rule infer_seg:
    input:
        model=rules.package_seg_model.output.model,
        dataset=dataset_input,
        images=out("index/{split}/shard-{shard}.txt"),
    output:
        masks=directory(out("seg/{split}/masks/shard-{shard}")),
    log:
        out("logs/infer_seg/{split}-{shard}.log"),
    benchmark:
        out("benchmarks/infer_seg/{split}-{shard}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 2
    params:
        settings=job_settings("segmentation.infer", "dataset:max_side", RUN),
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core infer-seg --settings {params.settings:q} --root {params.root:q}"
        " --images {input.images:q} --model {input.model:q} --threads {threads}"
        " --out-masks {output.masks:q} > {log:q} 2>&1"


rule evaluate_seg:
    input:
        masks=shards_of("seg/{split}/masks/shard-{shard}"),
        dataset=dataset_input,
        images=out("index/{split}/images.txt"),
        labels=out("index/{split}/labels.json"),
    output:
        metrics=out("seg/eval/{split}.json"),
        table=report(
            out("seg/eval/{split}.csv"),
            caption="../report/seg_quality.rst",
            category="Segmentation network",
            subcategory="{split}",
        ),
    log:
        out("logs/evaluate_seg/{split}.log"),
    benchmark:
        out("benchmarks/evaluate_seg/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core evaluate-seg --root {params.root:q} --images {input.images:q}"
        " --labels {input.labels:q} --masks {input.masks:q} --out-json {output.metrics:q}"
        " --out-csv {output.table:q} > {log:q} 2>&1"
