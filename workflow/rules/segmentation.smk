# Segmentation stage (DESIGN.md §1.6): a DeepLab-LargeFOV-style network trained on
# the exported random-walk masks; its masks of the evaluation splits per shard,
# and their evaluation. The model folder (weights + model.json, its own job so that
# new inference defaults need no retraining) is what `psa predict` reads.
SEG = config["segmentation"]
SEG_INFER = SEG["infer"]


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
        root=DATA_ROOT,
        masks=out("pseudo_masks/SegmentationClassAug"),
        checkpoint=out("seg/train_checkpoint.pt"),
        backbone=BACKBONE,
        init=stage_init_option("segmentation"),
        dilation=SEG["dilation"],
        epochs=SEG["epochs"],
        batch_size=SEG["batch_size"],
        lr=SEG["lr"],
        weight_decay=SEG["weight_decay"],
        poly_power=SEG["poly_power"],
        momentum=SEG["momentum"],
        crop_size=SEG["crop_size"],
        resize_long=spaced(SEG["resize_long"]),
        jitter=spaced(SEG["color_jitter"][k] for k in JITTER_KEYS),
        num_workers=SEG["num_workers"],
        seed=config["seed"],
        device=config["device"],
        amp=config["amp"],
    shell:
        "exec python -m psa_core train-seg --root {params.root} --images {input.images}"
        " --labels {input.labels} --masks {params.masks} --backbone {params.backbone}"
        " {params.init} --dilation {params.dilation} --epochs {params.epochs}"
        " --batch-size {params.batch_size} --lr {params.lr} --weight-decay {params.weight_decay}"
        " --poly-power {params.poly_power} --momentum {params.momentum}"
        " --crop-size {params.crop_size} --resize-long {params.resize_long}"
        " --color-jitter {params.jitter} --num-workers {params.num_workers}"
        " --seed {params.seed} --device {params.device} --amp {params.amp} --threads {threads}"
        " --checkpoint {params.checkpoint} --restart-on-change --out-log {output.log_csv}"
        " --out {output.weights} > {log} 2>&1"


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
        backbone=BACKBONE,
        dilation=SEG["dilation"],
        scales=spaced(SEG_INFER["scales"]),
        flip=flag("flip", SEG_INFER["flip"]),
        crf=flag("crf", SEG_INFER["crf"]),
        settings=model_settings(),
    shell:
        "exec python -m psa_core package-seg-model --weights {input.weights}"
        " --labels {input.labels} --backbone {params.backbone} --dilation {params.dilation}"
        " --scales {params.scales} {params.flip} {params.crf} --settings {params.settings}"
        " --out {output.model} > {log} 2>&1"


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
        root=DATA_ROOT,
        scales=spaced(SEG_INFER["scales"]),
        flip=flag("flip", SEG_INFER["flip"]),
        crf=flag("crf", SEG_INFER["crf"]),
        batch_size=SEG_INFER["batch_size"],
        device=config["device"],
        amp=config["amp"],
    shell:
        "exec python -m psa_core infer-seg --root {params.root} --images {input.images}"
        " --model {input.model} --scales {params.scales} {params.flip} {params.crf}"
        " --batch-size {params.batch_size} --device {params.device} --amp {params.amp}"
        " --threads {threads}"
        " --out-masks {output.masks} > {log} 2>&1"


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
        "exec python -m psa_core evaluate-seg --root {params.root} --images {input.images}"
        " --labels {input.labels} --masks {input.masks} --out-json {output.metrics}"
        " --out-csv {output.table} > {log} 2>&1"
