# Random-walk stage (DESIGN.md §1.4, §1.5): propagate each CAM shard over
# AffinityNet's affinities into masks, score them with an alpha sweep, export
# the training split's masks for a segmentation trainer, summarise all stages.


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
        root=DATA_ROOT,
        backbone=BACKBONE,
        radius=AFF["radius"],
        alpha=RW["alpha"],
        beta=RW["beta"],
        logt=RW["logt"],
        device=config["device"],
        amp=config["amp"],
    shell:
        "exec python -m psa_core random-walk --root {params.root} --images {input.images}"
        " --labels {input.labels} --cams {input.cams} --weights {input.weights}"
        " --backbone {params.backbone} --radius {params.radius} --alpha {params.alpha}"
        " --beta {params.beta} --logt {params.logt} --device {params.device} --amp {params.amp}"
        " --threads {threads} --out {output.scores} --out-affinity {output.affinity}"
        " --out-masks {output.masks} > {log} 2>&1"


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
        root=DATA_ROOT,
        alpha=RW["alpha"],
        alphas=spaced(RW["evaluate"]["alphas"]),
        beta=RW["beta"],
        logt=RW["logt"],
    shell:
        "exec python -m psa_core evaluate-random-walk --root {params.root} --images {input.images}"
        " --labels {input.labels} --walks {input.walks} --affinities {input.affinities}"
        " --cams {input.cams} --alpha {params.alpha} --alphas {params.alphas}"
        " --beta {params.beta} --logt {params.logt} --out-json {output.metrics}"
        " --out-csv {output.table} --out-plot {output.plot} > {log} 2>&1"


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
        "exec python -m psa_core export-masks --root {params.root} --images {input.images}"
        " --split {params.split} --masks {input.masks} --out {output.folder} > {log} 2>&1"


rule summarize:
    input:
        cam=expand(out("cam/eval/{split}.json"), split=EVAL_SPLITS),
        crf=expand(out("crf/eval/{split}.json"), split=EVAL_SPLITS),
        walk=expand(out("rw/eval/{split}.json"), split=EVAL_SPLITS),
        seg=expand(out("seg/eval/{split}.json"), split=EVAL_SPLITS),
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
        splits=spaced(EVAL_SPLITS),
    shell:
        "exec python -m psa_core summarize --splits {params.splits} --cam {input.cam}"
        " --crf {input.crf} --walk {input.walk} --seg {input.seg} --out-json {output.json}"
        " --out-csv {output.table} > {log} 2>&1"
