# CAM stage (docs/design.md §1.1, §1.5): train the classifier, multi-scale CAMs per
# shard (or another method's CAMs, cam.source external), CAM evaluation with a
# background-threshold sweep.


rule train_cam:
    input:
        unpack(val_index),
        init=stage_init_weights("cam"),
        dataset=dataset_input,
        images=out(f"index/{TRAIN_SPLIT}/images.txt"),
        labels=out(f"index/{TRAIN_SPLIT}/labels.json"),
    output:
        weights=out("cam/weights.pt"),
        log_csv=out("cam/train_log.csv"),
    log:
        out("logs/train_cam.log"),
    benchmark:
        out("benchmarks/train_cam.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 4
    params:
        settings=job_settings("model", "cam:-source,external_dir", TRAIN_RUN),
        root=DATA_ROOT,
        checkpoint=out("cam/train_checkpoint.pt"),
        init=init_option,
        val=val_options,
    shell:
        "exec python -m psa_core train-cam --settings {params.settings:q} --root {params.root:q}"
        " --images {input.images:q} --labels {input.labels:q} {params.val:q} {params.init:q}"
        " --threads {threads} --checkpoint {params.checkpoint:q} --restart-on-change"
        " --out-log {output.log_csv:q} --out {output.weights:q} > {log:q} 2>&1"


# With cam.source external, another method's CAMs (psa_core/cam_files.py) take the
# place of the trained classifier's: the shards downstream stages read are the same.
if EXTERNAL_CAMS:

    rule external_cams:
        input:
            unpack(external_cam_files),
            dataset=dataset_input,
            images=out("index/{split}/shard-{shard}.txt"),
            labels=out("index/{split}/shard-{shard}.json"),
        output:
            cams=out("cam/{split}/shard-{shard}.h5"),
        log:
            out("logs/external_cams/{split}-{shard}.log"),
        benchmark:
            out("benchmarks/external_cams/{split}-{shard}.tsv")
        conda:
            "../../envs/psa.yaml"
        threads: 1
        params:
            settings=job_settings("cam.infer:dtype", "dataset:max_side"),
            root=DATA_ROOT,
            source=config["cam"]["external_dir"],
        shell:
            "exec python -m psa_core external-cams --settings {params.settings:q}"
            " --root {params.root:q} --images {input.images:q} --labels {input.labels:q}"
            " --source {params.source:q} --out {output.cams:q} > {log:q} 2>&1"

else:

    rule infer_cam:
        input:
            weights=rules.train_cam.output.weights,
            dataset=dataset_input,
            images=out("index/{split}/shard-{shard}.txt"),
            labels=out("index/{split}/shard-{shard}.json"),
        output:
            cams=out("cam/{split}/shard-{shard}.h5"),
        log:
            out("logs/infer_cam/{split}-{shard}.log"),
        benchmark:
            out("benchmarks/infer_cam/{split}-{shard}.tsv")
        conda:
            "../../envs/psa.yaml"
        threads: 2
        params:
            settings=job_settings("model", "cam.infer", "dataset:max_side", RUN),
            root=DATA_ROOT,
        shell:
            "exec python -m psa_core infer-cam --settings {params.settings:q} --root {params.root:q}"
            " --images {input.images:q} --labels {input.labels:q} --weights {input.weights:q}"
            " --threads {threads} --out {output.cams:q} > {log:q} 2>&1"


rule evaluate_cam:
    input:
        cams=cam_shards,
        dataset=dataset_input,
        images=out("index/{split}/images.txt"),
        labels=out("index/{split}/labels.json"),
    output:
        metrics=out("cam/eval/{split}.json"),
        table=out("cam/eval/{split}.csv"),
        plot=report(
            out("cam/eval/{split}.svg"),
            caption="../report/cam_sweep.rst",
            category="CAM",
            subcategory="{split}",
        ),
    log:
        out("logs/evaluate_cam/{split}.log"),
    benchmark:
        out("benchmarks/evaluate_cam/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        settings=job_settings("cam.evaluate"),
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core evaluate-cam --settings {params.settings:q} --root {params.root:q}"
        " --images {input.images:q} --labels {input.labels:q} --cams {input.cams:q}"
        " --out-json {output.metrics:q} --out-csv {output.table:q} --out-svg {output.plot:q}"
        " > {log:q} 2>&1"
