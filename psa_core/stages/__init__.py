"""Stage drivers: one module per stage of the DAG (docs/design.md §2, §6).

A driver reads the stage's input artifacts, calls the library of psa_core and
writes its output artifacts atomically. Its keyword parameters are the options
of its `psa` subcommand (`psa_core.cli.COMMANDS`): settings sections of
`psa_core.settings`, groups of files from `common.py`, and plain paths and
values documented in its docstring's `Args:`.

    data.py          synth, index                            (workflow/rules/data.smk)
    coco.py          coco_split                              (workflow/rules/data.smk)
    cam.py           train_cam, infer_cam, evaluate_cam      (workflow/rules/cam.smk)
    external_cams.py external_cams                           (workflow/rules/cam.smk);
                     export_cams, import_cams (by hand)
    affinity.py      crf_labels, evaluate_crf_labels, train_affinity
                                                             (workflow/rules/affinity.smk)
    random_walk.py   random_walk_shard, evaluate_random_walk, export_masks, summarize
                                                             (workflow/rules/random_walk.smk)
    segmentation.py  train_seg, package_seg_model, infer_seg, evaluate_seg, predict
                                                             (workflow/rules/segmentation.smk)
    report.py        gallery                                 (workflow/rules/report.smk)
    config.py        print_schema (`psa config-schema`)

Helpers more than one stage needs live in `common.py`. A driver imports the
library it calls (torch, matplotlib, pydensecrf behind it) inside its body: the
CLI imports every driver, and `psa --help` or a light job (index, export,
summary) should not pay for torch.
"""
