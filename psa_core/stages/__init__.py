"""Stage drivers: one module per stage of the DAG (DESIGN.md §2).

A driver reads the stage's input artifacts, calls the pure functions of
psa_core and writes its output artifacts atomically. Every driver takes
keyword arguments named like the options of its `psa` subcommand and has no
defaults of its own: the CLI supplies them from `psa_core.defaults`.

    data.py       synth, index                      (workflow/rules/data.smk)
    cam.py        train_cam, infer_cam, evaluate_cam (workflow/rules/cam.smk)
    affinity.py   crf_labels, evaluate_crf_labels, train_affinity
                                                     (workflow/rules/affinity.smk)

Helpers more than one stage needs live in `common.py`.
"""
