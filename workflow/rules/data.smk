# Dataset stage: generate the synthetic set (when configured), convert each COCO split
# into a sample sheet and masks (when configured), index each split (for the
# evaluations and training) and each shard of it (for the per-shard jobs).


rule generate_synthetic:
    output:
        root=directory(out("synthetic")),
    log:
        out("logs/generate_synthetic.log"),
    benchmark:
        out("benchmarks/generate_synthetic.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        settings=job_settings("synthetic"),
    shell:
        "exec python -m psa_core synth --settings {params.settings:q} --out {output.root:q}"
        " > {log:q} 2>&1"


rule coco_split:
    input:
        annotations=lambda wildcards: str(coco_annotations(wildcards.split)),
    output:
        sheet=out("coco/{split}/sheet.tsv"),
        masks=directory(out("coco/{split}/masks")),
    log:
        out("logs/coco_split/{split}.log"),
    benchmark:
        out("benchmarks/coco_split/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        root=DATA_ROOT,
        images=DATASET["coco_images"],
    shell:
        "exec python -m psa_core coco-split --annotations {input.annotations:q}"
        " --root {params.root:q} --images {params.images:q} --split {wildcards.split:q}"
        " --out-sheet {output.sheet:q} --out-masks {output.masks:q} > {log:q} 2>&1"


rule index_split:
    input:
        dataset=split_list,
    output:
        images=out("index/{split}/images.txt"),
        labels=out("index/{split}/labels.json"),
    log:
        out("logs/index_split/{split}.log"),
    benchmark:
        out("benchmarks/index_split/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        settings=job_settings("dataset:classes"),
        root=DATA_ROOT,
        sheet=index_sheet,
        rows=split_rows,
    shell:
        "exec python -m psa_core index --settings {params.settings:q} --root {params.root:q}"
        " {params.sheet:q} --split {wildcards.split:q} --out-images {output.images:q}"
        " --out-labels {output.labels:q} > {log:q} 2>&1"


rule index_shard:
    input:
        unpack(shard_dataset_input),
    output:
        images=out("index/{split}/shard-{shard}.txt"),
        labels=out("index/{split}/shard-{shard}.json"),
    log:
        out("logs/index_shard/{split}-{shard}.log"),
    benchmark:
        out("benchmarks/index_shard/{split}-{shard}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        settings=job_settings("dataset:classes"),
        root=DATA_ROOT,
        shard_size=DATASET["shard_size"],
        names=shard_names,
        sheet=index_sheet,
        rows=shard_rows,
    shell:
        "exec python -m psa_core index --settings {params.settings:q} --root {params.root:q}"
        " {params.sheet:q} --split {wildcards.split:q} --shard {wildcards.shard:q} --shard-size {params.shard_size:q}"
        " --out-images {output.images:q} --out-labels {output.labels:q} > {log:q} 2>&1"
