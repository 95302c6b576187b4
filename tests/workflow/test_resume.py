"""Kill the workflow while AffinityNet trains, run the same command again: it resumes.

A real `snakemake --cores 2` is stopped by signals while `train_affinity`
runs; the second run must keep every finished artifact, rerun nothing before
`train_affinity`, continue the training from its checkpoint and end with the
weights of an uninterrupted run.

The signals go to Snakemake's process group, as a terminal's Ctrl-C (SIGINT)
and a batch system's cancel or time limit (SIGTERM to every process of the
job) deliver them. Snakemake forwards no signal to its jobs: SIGTERM to the
Snakemake process alone makes it wait for the running jobs ("Will exit after
finishing currently running jobs"), so the training would simply finish.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from psa_core import io
from tests.workflow.conftest import (
    RESULTS,
    FinishedRun,
    copy_run,
    job_list,
    planned_jobs,
    run_config,
    run_snakemake,
    snakemake_command,
    write_config,
)

AFFINITY_EPOCHS = 16
"""32 steps of 4 images (2 an epoch, a log row each) on the shared run's 8 training
images: a few seconds of training on 2 idle CPU cores, so the signal after
LOGGED_ROWS rows (step 4) comes well before the end."""

LOGGED_ROWS = 2
"""Data rows in the partial training log before the signal: training is under way."""

WAIT_S = 300.0
SIGINT_AFTER_S = 10.0

AFTER_AFFINITY = {
    "train_affinity",
    "random_walk",
    "evaluate_random_walk",
    "export_masks",
    "train_seg",
    "package_seg_model",
    "infer_seg",
    "evaluate_seg",
    "gallery",
    "summarize",
    "all",
}

FINISHED_BEFORE = (
    "cam/weights.pt",
    "cam/train/shard-*.h5",
    "cam/eval/train.json",
    "crf/train/shard-*.h5",
    "crf/eval/train.json",
    "index/*/*",
)


def resume_config() -> dict:
    config = run_config()
    config["dataset"]["eval_splits"] = ["train"]
    config["affinity"]["epochs"] = AFFINITY_EPOCHS
    return config


def stamps(results: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime in ns, bytes) of the artifacts finished before train_affinity."""
    files = sorted({p for pattern in FINISHED_BEFORE for p in results.glob(pattern)})
    assert len(files) >= 8, files
    return {str(p.relative_to(results)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def delete_outputs(workdir: Path, rules: set[str]) -> None:
    """Delete what the jobs of `rules` made, as listed by `snakemake --summary`."""
    proc = run_snakemake(workdir, "--summary")
    lines = proc.stdout.splitlines()
    assert lines and lines[0].split("\t")[:3] == ["output_file", "date", "rule"], proc.stdout
    deleted = set()
    for line in lines[1:]:
        path, _, rule = line.split("\t")[:3]
        path = workdir / path
        if rule in rules and (path.exists() or path.is_symlink()):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            deleted.add(rule)
    assert deleted == rules - {"all"}, deleted


def data_rows(log_csv: Path) -> int:
    try:
        return max(0, len(log_csv.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def interrupt_during_affinity_training(workdir: Path) -> tuple[int, str]:
    """Start the workflow, signal its process group once training logs LOGGED_ROWS rows.

    SIGTERM first; SIGINT as well if Snakemake still runs after SIGINT_AFTER_S.
    Returns Snakemake's exit code and output once every process of the group
    has exited (the training process may outlive Snakemake while it saves
    its checkpoint).
    """
    partial = workdir / RESULTS / "affinity/train_log.csv.partial"
    log_path = workdir / "interrupted-run.log"
    cmd = snakemake_command(workdir)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while data_rows(partial) < LOGGED_ROWS:
            if proc.poll() is not None:
                pytest.fail(f"the workflow ended before the signal:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"train_affinity logged no {LOGGED_ROWS} rows in {WAIT_S} s")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=SIGINT_AFTER_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if group_alive(proc.pid):  # only on a failure above: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, log_path.read_text()


@pytest.mark.slow
def test_killed_during_affinity_training_resumes_to_the_same_weights(
    finished_run: FinishedRun, tmp_path: Path
) -> None:
    # Everything before train_affinity, once: the shared finished run without what
    # train_affinity and the jobs after it made (with those outputs present and up to
    # date, Snakemake would not remake the missing weights). Both runs below start
    # from copies.
    prefix = copy_run(finished_run.workdir, tmp_path / "prefix")
    write_config(prefix, resume_config())
    delete_outputs(prefix, AFTER_AFFINITY)
    proc = run_snakemake(prefix, "-n", "--quiet", "rules")
    assert set(planned_jobs(proc.stdout + proc.stderr)) == AFTER_AFFINITY
    reference = copy_run(prefix, tmp_path / "reference")
    interrupted = copy_run(prefix, tmp_path / "interrupted")

    weights = f"{RESULTS}/affinity/weights.pt"
    run_snakemake(reference, weights)  # uninterrupted training
    expected = io.load_torch(reference / weights)

    results = interrupted / RESULTS
    before = stamps(results)
    code, first_output = interrupt_during_affinity_training(interrupted)
    assert code != 0, first_output
    assert (results / "affinity/train_checkpoint.pt").is_file(), first_output
    assert not (results / "affinity/weights.pt").exists(), "finished before the signal"
    assert not (results / "affinity/train_log.csv").exists()
    assert stamps(results) == before

    # The same command again, without --rerun-incomplete: Snakemake asks for it only
    # when an output marked incomplete exists, and train_affinity writes none before
    # it finishes.
    proc = run_snakemake(interrupted, "-n", "--quiet", "rules", check=False)
    assert "IncompleteFilesException" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert set(planned_jobs(proc.stdout + proc.stderr)) == AFTER_AFFINITY
    # Resumed to the weights only: what follows them is the rebuild tests' business.
    proc = run_snakemake(interrupted, weights)
    ran = [rule for rule, _ in job_list(proc.stdout + proc.stderr)]
    assert ran == ["train_affinity"], ran
    assert "resuming from" in (results / "logs/train_affinity.log").read_text()
    assert not (results / "affinity/train_checkpoint.pt").exists()
    assert stamps(results) == before
    weights = io.load_torch(results / "affinity/weights.pt")
    assert weights.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(weights[key], tensor), key
