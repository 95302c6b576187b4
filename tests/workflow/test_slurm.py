"""The SLURM profile on a real single-node SLURM cluster (tests/slurm/cluster.sh).

The cluster is real (munged, slurmctld, slurmd; jobs go through sbatch and srun), its
one GPU is fake (gres.conf maps it to /dev/null): SLURM schedules it and sets
CUDA_VISIBLE_DEVICES, the jobs still compute on the CPU (TINY_CONFIG says device: cpu).
Needs root and apt-get (it installs Debian's SLURM packages when sbatch is missing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.workflow.conftest import REPO, TINY_CONFIG, write_config

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
TARGET = "results/cam/val/shard-000.h5"
# The target's DAG, one layer each (the two index rules share one): few layers,
# because every layer costs a few seconds of sbatch, job start-up and polling.
RULES = (
    "generate_synthetic",
    "index_split",
    "index_shard",
    "train_cam",
    "infer_cam",
)
GPU_RULES = ("train_cam", "infer_cam")
RULE_LOGS = {
    "generate_synthetic": ["generate_synthetic.log"],
    "index_split": ["index_split/train.log", "index_split/val.log"],
    "index_shard": ["index_shard/val-000.log"],
    "train_cam": ["train_cam.log"],
    "infer_cam": ["infer_cam/val-000.log"],
}
# Snakemake ignores SIGTERM while it polls; SIGINT stops it and cancels its jobs.
RUN_TIMEOUT_S = 240


def _cluster(command: str) -> None:
    proc = subprocess.run(
        ["bash", str(CLUSTER), command], capture_output=True, text=True, timeout=600
    )
    print(proc.stdout + proc.stderr, end="")
    if proc.returncode != 0:
        raise RuntimeError(f"tests/slurm/cluster.sh {command} failed:\n{proc.stdout}{proc.stderr}")


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[None]:
    """A running single-node cluster (partitions cpu and gpu), stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root (it installs and starts munged, slurmctld, slurmd)")
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM test needs apt-get (Debian/Ubuntu) to install the SLURM packages")
    if shutil.which("sbatch") is None:
        _cluster("install")
    try:
        _cluster("start")
        yield
    finally:
        _cluster("stop")


def _node(field: str) -> int:
    """A per-node number from sinfo: %c CPUs, %m memory in MB."""
    out = subprocess.run(["sinfo", "-h", "-o", field], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0].rstrip("+"))


def _scontrol_job(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    assert out.returncode == 0, f"scontrol show job {job_id}: {out.stderr}"
    return out.stdout


@pytest.mark.slurm
def test_slurm_profile_runs_jobs_through_slurm(slurm_cluster: None, tmp_path: Path) -> None:
    write_config(tmp_path, TINY_CONFIG)
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    largest = max(profile["set-resources"][rule]["mem_mb"] for rule in RULES)
    if (memory := _node("%m")) < largest:
        pytest.skip(f"the SLURM node has {memory} MB; the profile asks for up to {largest} MB")
    cmd = [
        "timeout",
        "-s",
        "INT",
        str(RUN_TIMEOUT_S),
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--workflow-profile",
        str(PROFILE),
        # The one environment-specific value: train_cam asks for 4 threads
        # (--cpus-per-task=4), more than this node may have.
        "--max-threads",
        str(_node("%c")),
        # Keep the plugin's per-job logs (it deletes those of successful jobs).
        "--slurm-keep-successful-logs",
        # Poll every few seconds instead of 40 s: the jobs here take seconds.
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--seconds-between-status-checks",
        "2",
        # Prints each sbatch call.
        "--verbose",
        TARGET,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake on SLURM failed ({proc.returncode}):\n{output[-8000:]}"
    assert (tmp_path / TARGET).is_file()

    # 1. The plugin's per-job logs: .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<id>.log
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    job_ids: dict[str, set[str]] = {}
    for rule in RULES:
        logs = sorted((slurm_logs / f"rule_{rule}").rglob("*.log"))
        job_ids[rule] = {log.stem for log in logs}
        assert logs and all(i.isdigit() for i in job_ids[rule]), f"{rule}: SLURM logs {logs}"
        assert len(job_ids[rule]) == len(RULE_LOGS[rule]), (rule, logs)
        for log in logs:
            # With --verbose the job's Snakemake prints its environment there.
            text = log.read_text()
            assert f"'SLURM_JOB_ID': '{log.stem}'" in text, f"{log}:\n{text[-3000:]}"
            if rule in GPU_RULES:
                assert "'CUDA_VISIBLE_DEVICES': '0'" in text, f"{log}:\n{text[-3000:]}"

    # 2. Each job's command saw its own SLURM job id (psa logs it to the rule's log).
    for rule, names in RULE_LOGS.items():
        for name in names:
            text = (tmp_path / "results" / "logs" / name).read_text()
            match = re.search(r"psa: running as SLURM job (\d+)", text)
            assert match, f"results/logs/{name} has no 'psa: running as SLURM job <id>':\n{text}"
            assert match.group(1) in job_ids[rule], (name, match.group(1), job_ids[rule])

    # 3. The GPU rules asked for a GPU on the gpu partition, the CPU rules did not.
    calls = {}
    for line in output.splitlines():
        match = re.search(r"sbatch call: (.*?) --wrap=", line)
        if match:
            rule = re.search(r"--comment rule_(\w+?)(?:_wildcards_\S+)? ", line).group(1)
            calls.setdefault(rule, []).append(match.group(1))
    assert sorted(calls) == sorted(RULES), calls
    for rule, rule_calls in calls.items():
        for call in rule_calls:
            if rule in GPU_RULES:
                assert "--gpus=1" in call and "-p gpu" in call, call
            else:
                assert "--gpus" not in call and "-p cpu" in call, call

    # 4. SLURM's own record (finished jobs stay listed for MinJobAge = 300 s).
    for rule in RULES:
        for job_id in job_ids[rule]:
            job = _scontrol_job(job_id)
            assert "JobState=COMPLETED" in job, job
            if rule in GPU_RULES:
                assert "Partition=gpu" in job and "TresPerJob=gres:gpu:1" in job, job
            else:
                assert "Partition=cpu" in job and "gres:gpu" not in job, job
