# Dataset stage: generate the synthetic set (when configured), index each split
# (for the evaluations and training) and each shard of it (for the per-shard jobs).


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
    shell:
        "exec python -m psa_core index --settings {params.settings:q} --root {params.root:q}"
        " --split {wildcards.split:q} --out-images {output.images:q}"
        " --out-labels {output.labels:q} > {log:q} 2>&1"


rule index_shard:
    input:
        dataset=dataset_input,
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
    shell:
        "exec python -m psa_core index --settings {params.settings:q} --root {params.root:q}"
        " --split {wildcards.split:q} --shard {wildcards.shard:q} --shard-size {params.shard_size:q}"
        " --out-images {output.images:q} --out-labels {output.labels:q} > {log:q} 2>&1"
