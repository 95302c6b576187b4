# CAM stage (DESIGN.md §1.1, §1.5): train the classifier, multi-scale CAMs per
# shard, CAM evaluation with a background-threshold sweep.
CAM = config["cam"]


rule train_cam:
    input:
        unpack(val_index),
        init=init_weights,
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
        root=DATA_ROOT,
        checkpoint=out("cam/train_checkpoint.pt"),
        val=val_options,
        backbone=BACKBONE,
        init=option("--init", CAM["init_weights"]),
        epochs=CAM["epochs"],
        batch_size=CAM["batch_size"],
        lr=CAM["lr"],
        weight_decay=CAM["weight_decay"],
        poly_power=CAM["poly_power"],
        momentum=CAM["momentum"],
        crop_size=CAM["crop_size"],
        resize_long=spaced(CAM["resize_long"]),
        jitter=spaced(CAM["color_jitter"][k] for k in JITTER_KEYS),
        num_workers=CAM["num_workers"],
        seed=config["seed"],
        device=config["device"],
        amp=config["amp"],
    shell:
        "exec python -m psa_core train-cam --root {params.root} --images {input.images}"
        " --labels {input.labels} {params.val} --backbone {params.backbone} {params.init}"
        " --epochs {params.epochs} --batch-size {params.batch_size} --lr {params.lr}"
        " --weight-decay {params.weight_decay} --poly-power {params.poly_power}"
        " --momentum {params.momentum}"
        " --crop-size {params.crop_size} --resize-long {params.resize_long}"
        " --color-jitter {params.jitter} --num-workers {params.num_workers}"
        " --seed {params.seed} --device {params.device} --amp {params.amp} --threads {threads}"
        " --checkpoint {params.checkpoint} --restart-on-change --out-log {output.log_csv}"
        " --out {output.weights} > {log} 2>&1"


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
        root=DATA_ROOT,
        backbone=BACKBONE,
        scales=spaced(CAM["infer"]["scales"]),
        dtype=CAM["infer"]["dtype"],
        device=config["device"],
        amp=config["amp"],
    shell:
        "exec python -m psa_core infer-cam --root {params.root} --images {input.images}"
        " --labels {input.labels} --weights {input.weights} --backbone {params.backbone}"
        " --scales {params.scales} --dtype {params.dtype} --device {params.device}"
        " --amp {params.amp} --threads {threads}"
        " --out {output.cams} > {log} 2>&1"


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
        root=DATA_ROOT,
        thresholds=spaced(CAM["evaluate"]["thresholds"]),
        bg_threshold=CAM["evaluate"]["bg_threshold"],
    shell:
        "exec python -m psa_core evaluate-cam --root {params.root} --images {input.images}"
        " --labels {input.labels} --cams {input.cams} --thresholds {params.thresholds}"
        " --bg-threshold {params.bg_threshold} --out-json {output.metrics}"
        " --out-csv {output.table} --out-svg {output.plot} > {log} 2>&1"
