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
        seed=config["synthetic"]["seed"],
        num_train=config["synthetic"]["num_train"],
        num_val=config["synthetic"]["num_val"],
        min_side=config["synthetic"]["image_size"][0],
        max_side=config["synthetic"]["image_size"][1],
        num_classes=config["synthetic"]["num_classes"],
    shell:
        "exec python -m psa_core synth --out {output.root} --seed {params.seed} --num-train {params.num_train}"
        " --num-val {params.num_val} --image-size {params.min_side} {params.max_side}"
        " --num-classes {params.num_classes} > {log} 2>&1"


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
        root=DATA_ROOT,
        classes=classes_arg(),
    shell:
        "exec python -m psa_core index --root {params.root} --split {wildcards.split} {params.classes}"
        " --out-images {output.images} --out-labels {output.labels} > {log} 2>&1"


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
        root=DATA_ROOT,
        classes=classes_arg(),
        shard_size=DATASET["shard_size"],
        names=shard_names,
    shell:
        "exec python -m psa_core index --root {params.root} --split {wildcards.split} {params.classes}"
        " --shard {wildcards.shard} --shard-size {params.shard_size}"
        " --out-images {output.images} --out-labels {output.labels} > {log} 2>&1"
