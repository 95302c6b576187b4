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
        settings=job_settings("report"),
        root=DATA_ROOT,
    shell:
        "exec python -m psa_core gallery --settings {params.settings:q} --root {params.root:q}"
        " --images {input.images:q} --labels {input.labels:q} --cams {input.cams:q}"
        " --crf {input.crf:q} --masks {input.masks:q} --seg-masks {input.seg_masks:q}"
        " --out {output.picture:q} > {log:q} 2>&1"
