# Report stage: the gallery the Snakemake report shows beside the evaluation
# tables and plots (`snakemake --report report.html`).


rule gallery:
    input:
        cams=cam_shards,
        crf=crf_shards,
        masks=shards_of("rw/{split}/masks/shard-{shard}"),
        seg_masks=shards_of("seg/{split}/masks/shard-{shard}"),
        dataset=dataset_input,
        images=out("index/{split}/images.txt"),
        labels=out("index/{split}/labels.json"),
    output:
        picture=report(
            out("report/gallery-{split}.png"),
            caption="../report/gallery.rst",
            category="Gallery",
            subcategory="{split}",
        ),
    log:
        out("logs/gallery/{split}.log"),
    benchmark:
        out("benchmarks/gallery/{split}.tsv")
    conda:
        "../../envs/psa.yaml"
    threads: 1
    params:
        root=DATA_ROOT,
        size=config["report"]["gallery_size"],
    shell:
        "exec python -m psa_core gallery --root {params.root} --images {input.images}"
        " --labels {input.labels} --cams {input.cams} --crf {input.crf} --masks {input.masks}"
        " --seg-masks {input.seg_masks}"
        " --count {params.size} --out {output.picture} > {log} 2>&1"
