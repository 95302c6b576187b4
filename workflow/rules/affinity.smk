# Affinity stage (DESIGN.md §1.2, §1.3): dense-CRF score stacks and label maps per
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
    threads: CRF["workers"]
    params:
        root=DATA_ROOT,
        alpha_low=CRF["alpha_low"],
        alpha_high=CRF["alpha_high"],
        iterations=CRF["iterations"],
        gaussian_sxy=CRF["gaussian_sxy"],
        gaussian_compat=CRF["gaussian_compat"],
        bilateral_sxy=CRF["bilateral_sxy"],
        bilateral_srgb=CRF["bilateral_srgb"],
        bilateral_compat=CRF["bilateral_compat"],
        dtype=CRF["dtype"],
    shell:
        "exec python -m psa_core crf-labels --root {params.root} --images {input.images}"
        " --labels {input.labels} --cams {input.cams} --alpha-low {params.alpha_low}"
        " --alpha-high {params.alpha_high} --iterations {params.iterations}"
        " --gaussian-sxy {params.gaussian_sxy} --gaussian-compat {params.gaussian_compat}"
        " --bilateral-sxy {params.bilateral_sxy} --bilateral-srgb {params.bilateral_srgb}"
        " --bilateral-compat {params.bilateral_compat} --dtype {params.dtype}"
        " --workers {threads} --out {output.scores} --out-maps {output.maps} > {log} 2>&1"


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
        "exec python -m psa_core evaluate-crf-labels --root {params.root} --images {input.images}"
        " --labels {input.labels} --crf {input.crf} --out-json {output.metrics}"
        " --out-csv {output.table} > {log} 2>&1"


rule train_affinity:
    input:
        init=stage_init_weights("affinity"),
        crf=expand(
            out("crf/{split}/shard-{shard}.h5"), split=TRAIN_SPLIT, shard=shard_ids(TRAIN_SPLIT)
        ),
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
        root=DATA_ROOT,
        checkpoint=out("affinity/train_checkpoint.pt"),
        backbone=BACKBONE,
        init=stage_init_option("affinity"),
        epochs=AFF["epochs"],
        batch_size=AFF["batch_size"],
        lr=AFF["lr"],
        weight_decay=AFF["weight_decay"],
        poly_power=AFF["poly_power"],
        momentum=AFF["momentum"],
        crop_size=AFF["crop_size"],
        jitter=spaced(AFF["color_jitter"][k] for k in JITTER_KEYS),
        num_workers=AFF["num_workers"],
        radius=AFF["radius"],
        seed=config["seed"],
        device=config["device"],
        amp=config["amp"],
    shell:
        "exec python -m psa_core train-affinity --root {params.root} --images {input.images}"
        " --labels {input.labels} --crf {input.crf} --backbone {params.backbone} {params.init}"
        " --epochs {params.epochs} --batch-size {params.batch_size} --lr {params.lr}"
        " --weight-decay {params.weight_decay} --poly-power {params.poly_power}"
        " --momentum {params.momentum} --crop-size {params.crop_size}"
        " --color-jitter {params.jitter} --num-workers {params.num_workers}"
        " --radius {params.radius} --seed {params.seed} --device {params.device}"
        " --amp {params.amp} --threads {threads} --checkpoint {params.checkpoint}"
        " --restart-on-change --out-log {output.log_csv} --out {output.weights} > {log} 2>&1"
