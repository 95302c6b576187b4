# Random-walk stage (docs/design.md §1.4, §1.5): propagate each CAM shard over
# AffinityNet's affinities into masks, score them with an alpha sweep (splits with
# masks) or report what the walk changed in the CAMs (splits without), export the
# training split's masks for a segmentation trainer, summarise all stages.


rule random_walk:
    input:
        weights=rules.train_affinity.output.weights,
        cams=out("cam/{split}/shard-{shard}.h5"),
        dataset=dataset_input,
        images=out("index/{split}/shard-{shard}.txt"),
        labels=out("index/{split}/shard-{shard}.json"),
    output:
        scores=out("rw/{split}/shard-{shard}.h5"),
        affinity=out("rw/{split}/affinity-{shard}.h5"),
        masks=directory(out("rw/{split}/masks/shard-{shard}")),
    log:
        out("logs/random_walk/{split}-{shard}.log"),
    benchmark:
        out("benchmarks/random_walk/{split}-{shard}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 2
    params:
        settings=job_settings("model", "affinity:radius", "random_walk", RUN),
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core random-walk --settings {params.settings:q} --root {params.root:q}"
        " --images {input.images:q} --labels {input.labels:q} --cams {input.cams:q}"
        " --weights {input.weights:q} --threads {threads} --out {output.scores:q}"
        " --out-affinity {output.affinity:q} --out-masks {output.masks:q} > {log:q} 2>&1"


rule evaluate_random_walk:
    input:
        walks=walk_shards,
        affinities=affinity_shards,
        cams=cam_shards,
        dataset=dataset_input,
        images=out("index/{split}/images.txt"),
        labels=out("index/{split}/labels.json"),
    output:
        metrics=out("rw/eval/{split}.json"),
        table=out("rw/eval/{split}.csv"),
        plot=report(
            out("rw/eval/{split}.svg"),
            caption="../report/rw_sweep.rst",
            category="Random walk",
            subcategory="{split}",
        ),
    log:
        out("logs/evaluate_random_walk/{split}.log"),
    benchmark:
        out("benchmarks/evaluate_random_walk/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 2
    params:
        settings=job_settings("random_walk", "random_walk.evaluate", ":device"),
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core evaluate-random-walk --settings {params.settings:q}"
        " --threads {threads} --root {params.root:q}"
        " --images {input.images:q} --labels {input.labels:q}"
        " --walks {input.walks:q} --affinities {input.affinities:q} --cams {input.cams:q}"
        " --out-json {output.metrics:q} --out-csv {output.table:q} --out-plot {output.plot:q}"
        " > {log:q} 2>&1"


rule walk_changes:
    input:
        cams=cam_shards,
        masks=shards_of("rw/{split}/masks/shard-{shard}"),
        dataset=dataset_input,
        images=out("index/{split}/images.txt"),
    output:
        report=out("rw/changes/{split}.json"),
    log:
        out("logs/walk_changes/{split}.log"),
    benchmark:
        out("benchmarks/walk_changes/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        settings=job_settings("cam.evaluate:bg_threshold"),
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core walk-changes --settings {params.settings:q} --root {params.root:q}"
        " --images {input.images:q} --cams {input.cams:q} --masks {input.masks:q}"
        " --out {output.report:q} > {log:q} 2>&1"


rule export_masks:
    input:
        masks=split_shards("rw/{split}/masks/shard-{shard}", TRAIN_SPLIT),
        dataset=dataset_input,
        images=out(f"index/{TRAIN_SPLIT}/images.txt"),
    output:
        folder=directory(out("pseudo_masks")),
    log:
        out("logs/export_masks.log"),
    benchmark:
        out("benchmarks/export_masks.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        root=DATA_ROOT,
        split=TRAIN_SPLIT,
    shell:
        "exec python -m psa_core export-masks --root {params.root:q} --images {input.images:q}"
        " --split {params.split:q} --masks {input.masks:q} --out {output.folder:q} > {log:q} 2>&1"


rule summarize:
    input:
        unpack(classifier_input),
        cam=expand(out("cam/eval/{split}.json"), split=SCORED_SPLITS),
        crf=expand(out("crf/eval/{split}.json"), split=SCORED_SPLITS),
        walk=expand(out("rw/eval/{split}.json"), split=SCORED_SPLITS),
        seg=expand(out("seg/eval/{split}.json"), split=SCORED_SPLITS),
        changes=expand(out("rw/changes/{split}.json"), split=UNSCORED_SPLITS),
    output:
        json=out("summary.json"),
        table=report(
            out("summary.csv"),
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        out("logs/summarize.log"),
    benchmark:
        out("benchmarks/summarize.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        options=summary_options,
    shell:
        "exec python -m psa_core summarize {params.options:q}"
        " --out-json {output.json:q} --out-csv {output.table:q} > {log:q} 2>&1"
