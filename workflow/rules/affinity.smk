# Affinity stage (docs/design.md §1.2, §1.3): dense-CRF score stacks and label maps per
# CAM shard, their evaluation against ground truth, AffinityNet training.


rule crf_labels:
    input:
        cams=out("cam/{split}/shard-{shard}.h5"),
        dataset=dataset_input,
        images=out("index/{split}/shard-{shard}.txt"),
        labels=out("index/{split}/shard-{shard}.json"),
    output:
        scores=out("crf/{split}/shard-{shard}.h5"),
        maps=directory(out("crf/{split}/label_maps/shard-{shard}")),
    log:
        out("logs/crf_labels/{split}-{shard}.log"),
    benchmark:
        out("benchmarks/crf_labels/{split}-{shard}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: config["crf"]["workers"]
    params:
        # the worker count changes no output: it is the job's threads, not a setting
        settings=job_settings("crf:-workers"),
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core crf-labels --settings {params.settings:q} --workers {threads}"
        " --root {params.root:q} --images {input.images:q} --labels {input.labels:q}"
        " --cams {input.cams:q} --out {output.scores:q} --out-maps {output.maps:q} > {log:q} 2>&1"


rule evaluate_crf_labels:
    input:
        crf=crf_shards,
        dataset=dataset_input,
        images=out("index/{split}/images.txt"),
        labels=out("index/{split}/labels.json"),
    output:
        metrics=out("crf/eval/{split}.json"),
        table=report(
            out("crf/eval/{split}.csv"),
            caption="../report/crf_quality.rst",
            category="CRF labels",
            subcategory="{split}",
        ),
    log:
        out("logs/evaluate_crf_labels/{split}.log"),
    benchmark:
        out("benchmarks/evaluate_crf_labels/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core evaluate-crf-labels --root {params.root:q}"
        " --images {input.images:q} --labels {input.labels:q} --crf {input.crf:q}"
        " --out-json {output.metrics:q} --out-csv {output.table:q} > {log:q} 2>&1"


rule train_affinity:
    input:
        init=stage_init_weights("affinity"),
        crf=split_shards("crf/{split}/shard-{shard}.h5", TRAIN_SPLIT),
        dataset=dataset_input,
        images=out(f"index/{TRAIN_SPLIT}/images.txt"),
        labels=out(f"index/{TRAIN_SPLIT}/labels.json"),
    output:
        weights=out("affinity/weights.pt"),
        log_csv=out("affinity/train_log.csv"),
    log:
        out("logs/train_affinity.log"),
    benchmark:
        out("benchmarks/train_affinity.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 4
    params:
        settings=job_settings("model", "affinity", TRAIN_RUN),
        root=DATA_ROOT,
        checkpoint=out("affinity/train_checkpoint.pt"),
        init=init_option,
    shell:
        "exec python -m psa_core train-affinity --settings {params.settings:q}"
        " --root {params.root:q} --images {input.images:q} --labels {input.labels:q}"
        " --crf {input.crf:q} {params.init:q} --threads {threads}"
        " --checkpoint {params.checkpoint:q} --restart-on-change --out-log {output.log_csv:q}"
        " --out {output.weights:q} > {log:q} 2>&1"
