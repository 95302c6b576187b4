"""One GPU per job on a workstation: claim a free device with a lock file.

Snakemake gives local jobs no GPU id, so with `--resources gpu=N` every GPU job
would open cuda:0. Each job instead takes an exclusive `flock` on
`<lock_dir>/gpu<physical id>.lock` for the first free visible device and keeps
it for the life of the process; the kernel drops the lock when the process
exits or is killed, so a crashed job frees its device. `--resources gpu=N`
already bounds how many GPU jobs run at once: waiting here only covers races.

Used by `psa_core.device.resolve_device` only. No torch here: the caller passes
the visible device count, so tests fake it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from psa_core.errors import PsaError

LOCK_DIR_ENV = "PSA_GPU_LOCK_DIR"
"""Environment variable naming the lock folder (shared by all jobs that share GPUs)."""

CLAIM_TIMEOUT_S = 1800.0
"""How long a job waits for a free GPU before it gives up."""

POLL_S = 0.5
"""Pause between two rounds of tries while every GPU is taken."""

SLURM_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
"""Variables through which a SLURM allocation hands a job its GPUs."""

log = logging.getLogger("psa")

_claim: tuple[int, IO[str]] | None = None
"""(visible index, open lock file) of this process's claim; the file stays open
(and locked) until the process ends."""
_claim_mutex = threading.Lock()


def gpu_lock_dir(env: Mapping[str, str]) -> Path:
    """The lock folder: `$PSA_GPU_LOCK_DIR`, else `<tmp>/psa-gpu-locks-<uid>`."""
    chosen = env.get(LOCK_DIR_ENV)
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / f"psa-gpu-locks-{os.getuid()}"


def physical_ids(count: int, visible_devices: str | None) -> list[str]:
    """The physical id of each of the `count` visible devices, for lock names.

    With `CUDA_VISIBLE_DEVICES="3,1"` torch's cuda:0 is GPU 3 and cuda:1 is GPU 1,
    so two jobs with different orders still name the same card the same way.
    Entries may be UUIDs (`GPU-…`, `MIG-…`); characters unfit for a file name
    become `_`.
    """
    entries = [e.strip() for e in (visible_devices or "").split(",") if e.strip()]
    ids = []
    for index in range(count):
        raw = entries[index] if visible_devices and index < len(entries) else str(index)
        ids.append(re.sub(r"[^A-Za-z0-9._-]", "_", raw))
    return ids


def slurm_allocated(env: Mapping[str, str]) -> bool:
    """True inside a SLURM job whose allocation names its GPUs (use them as they are)."""
    return bool(env.get("SLURM_JOB_ID")) and any(env.get(v) for v in SLURM_GPU_VARS)


def claim_gpu(
    count: int,
    visible_devices: str | None,
    lock_dir: Path,
    env: Mapping[str, str],
    *,
    timeout_s: float = CLAIM_TIMEOUT_S,
    poll_s: float = POLL_S,
) -> int | None:
    """Claim a free visible CUDA device for this process, once.

    Args:
        count: devices visible to torch (`torch.cuda.device_count()`).
        visible_devices: `CUDA_VISIBLE_DEVICES` as set (None when unset).
        lock_dir: folder of the lock files (`gpu_lock_dir(env)`).
        env: the environment (SLURM variables).
        timeout_s: give up after this many seconds of waiting.
        poll_s: pause between rounds of tries.

    Returns:
        The visible index to use (cuda:<index>), or None when nothing is claimed:
        at most one device visible, or a SLURM job with its own allocation.
        A second call in the same process returns the first call's index.

    Raises:
        PsaError: no device came free within `timeout_s`, or the lock folder is unusable.
    """
    global _claim
    with _claim_mutex:
        if _claim is not None:
            return _claim[0]
        if count <= 1 or slurm_allocated(env):
            return None
        ids = physical_ids(count, visible_devices)
        _make_lock_dir(lock_dir, env)
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            for index, physical in enumerate(ids):
                held = _try_lock(lock_dir / f"gpu{physical}.lock")
                if held is not None:
                    _claim = (index, held)
                    log.info(
                        "GPU: claimed cuda:%d = physical GPU %s (lock %s)",
                        index,
                        physical,
                        held.name,
                    )
                    return index
            if time.monotonic() >= deadline:
                raise PsaError(
                    f"no free GPU after {timeout_s:g} s: all {count} visible devices "
                    f"(physical {', '.join(ids)}) are held by other jobs through the lock files "
                    f"in {lock_dir} (`fuser -v {lock_dir}/*.lock` names them); run at most "
                    "as many GPU jobs as GPUs (snakemake --resources gpu=N), or pin one with "
                    "device: cuda:N"
                )
            if not waiting:
                waiting = True
                log.info(
                    "GPU: all %d devices are claimed by other jobs (locks in %s); waiting",
                    count,
                    lock_dir,
                )
            time.sleep(poll_s)


def _make_lock_dir(lock_dir: Path, env: Mapping[str, str]) -> None:
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise PsaError(
            f"GPU lock folder {lock_dir}: cannot create it ({e.strerror}); "
            f"set {LOCK_DIR_ENV} to a writable folder"
        ) from None
    # The default folder sits in the shared temp dir: one planted by another user
    # could hold our locks, so it must be ours.
    if not env.get(LOCK_DIR_ENV) and lock_dir.stat().st_uid != os.getuid():
        raise PsaError(
            f"GPU lock folder {lock_dir} belongs to another user; "
            f"set {LOCK_DIR_ENV} to a folder of your own"
        )


def _try_lock(path: Path) -> IO[str] | None:
    """The open, exclusively locked file at `path`, or None when another process holds it."""
    try:
        handle = open(path, "a+")  # noqa: SIM115 - stays open: closing it would drop the lock
    except PermissionError:  # a folder shared between users: flock needs only read access
        try:
            handle = open(path)  # noqa: SIM115
        except OSError as e:
            raise PsaError(
                f"GPU lock {path}: cannot open it ({e.strerror}); "
                f"set {LOCK_DIR_ENV} to a folder you can write"
            ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    if handle.writable():  # who holds it, for a person looking at the folder
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle
