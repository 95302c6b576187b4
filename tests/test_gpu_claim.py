"""GPU claiming (psa_core/gpu_claim.py, psa_core/device.py): real processes, real lock
files in tmp_path, a faked device count; no GPU needed.

Each claimant is a separate `python -c` process (a claim lasts as long as its process),
which prints its index and holds the claim until its stdin closes.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import torch

from psa_core import device, gpu_claim
from psa_core.errors import PsaError

CLAIMANT = """
import json, logging, sys
from pathlib import Path
from psa_core.errors import PsaError
from psa_core.gpu_claim import claim_gpu
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
a = json.loads(sys.argv[1])
calls = a.get("calls", 1)
try:
    for _ in range(calls):
        index = claim_gpu(a["count"], a["visible"], Path(a["lock_dir"]), a["env"],
                          timeout_s=a["timeout"], poll_s=0.02)
        print(json.dumps(index), flush=True)
except PsaError as e:
    print("error: " + str(e), flush=True)
    sys.exit(3)
sys.stdin.readline()
"""

RESOLVER = """
import sys, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 3
torch.cuda.set_device = lambda index: print("set_device", index, flush=True)
from psa_core.device import resolve_device
for name in ("auto", "cuda", "auto"):
    print(resolve_device(name), flush=True)
sys.stdin.readline()
"""

ROOT = Path(__file__).resolve().parents[1]


class Claimants:
    """Starts claimant processes and ends every one of them at teardown."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self,
        count: int,
        visible: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 5.0,
        calls: int = 1,
    ) -> subprocess.Popen[str]:
        args = {
            "count": count,
            "visible": visible,
            "lock_dir": str(self.lock_dir),
            "env": env or {},
            "timeout": timeout,
            "calls": calls,
        }
        return self.spawn(["-c", CLAIMANT, json.dumps(args)])

    def spawn(self, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,  # type: ignore[arg-type]
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def claimants(tmp_path: Path) -> Iterator[Claimants]:
    group = Claimants(tmp_path / "locks")
    yield group
    group.close()


def claimed(proc: subprocess.Popen[str]) -> int | None:
    """The index a claimant printed (it then holds the claim)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line and not line.startswith("error"), (line, proc.stderr and proc.stderr.read())
    return json.loads(line)


def release(proc: subprocess.Popen[str]) -> str:
    """Tell a claimant to exit, wait for it; its remaining log (stderr)."""
    return proc.communicate("\n", timeout=10)[1]


def is_locked(path: Path) -> bool:
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def hold(path: Path) -> IO[str]:
    """Lock `path` from this (test) process, as another job would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - closed by the test to release
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_two_concurrent_processes_get_different_devices(claimants: Claimants) -> None:
    a, b = claimants.start(2), claimants.start(2)
    assert {claimed(a), claimed(b)} == {0, 1}
    assert sorted(p.name for p in claimants.lock_dir.iterdir()) == ["gpu0.lock", "gpu1.lock"]
    assert all(is_locked(p) for p in claimants.lock_dir.iterdir())
    assert claimants.lock_dir.stat().st_mode & 0o777 == 0o700


def test_n_processes_spread_over_n_devices(claimants: Claimants) -> None:
    procs = [claimants.start(4) for _ in range(4)]
    indices = [claimed(p) for p in procs]
    assert sorted(indices) == [0, 1, 2, 3]
    # each lock file names its holder
    pids = {int((claimants.lock_dir / f"gpu{i}.lock").read_text()) for i in indices}
    assert pids == {p.pid for p in procs}
    for p in procs:
        release(p)
    assert not any(is_locked(p) for p in claimants.lock_dir.iterdir())


def test_a_killed_process_frees_its_device(claimants: Claimants) -> None:
    first = claimants.start(2)
    assert claimed(first) == 0
    second = claimants.start(2)
    assert claimed(second) == 1
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert claimed(claimants.start(2)) == 0


def test_waits_while_all_are_taken_then_gets_the_freed_one(claimants: Claimants) -> None:
    held = [hold(claimants.lock_dir / f"gpu{i}.lock") for i in range(2)]
    waiter = claimants.start(2, timeout=20)
    assert waiter.stderr is not None
    assert any("waiting" in line for line in iter(waiter.stderr.readline, ""))  # then polls
    held[1].close()
    assert claimed(waiter) == 1
    assert "claimed cuda:1 = physical GPU 1" in release(waiter)
    held[0].close()


def test_gives_up_after_the_timeout_naming_the_lock_folder(claimants: Claimants) -> None:
    held = [hold(claimants.lock_dir / f"gpu{i}.lock") for i in range(2)]
    proc = claimants.start(2, timeout=0.2)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert "no free GPU after 0.2 s" in out and str(claimants.lock_dir) in out
    for handle in held:
        handle.close()


def test_visible_devices_map_to_physical_lock_names(claimants: Claimants) -> None:
    a = claimants.start(2, visible="3,1")
    assert claimed(a) == 0
    assert is_locked(claimants.lock_dir / "gpu3.lock")
    # the other order sees GPU 3 as its cuda:1, GPU 1 as its cuda:0: no collision
    b = claimants.start(2, visible="1,3")
    assert claimed(b) == 0
    assert is_locked(claimants.lock_dir / "gpu1.lock")
    c = claimants.start(2, visible="3, 1", timeout=0.1)
    out, _ = c.communicate(timeout=10)
    assert out.startswith("error: no free GPU") and "physical 3, 1" in out


def test_claiming_twice_in_a_process_returns_the_same_device(claimants: Claimants) -> None:
    proc = claimants.start(3, calls=3)
    assert [claimed(proc) for _ in range(3)] == [0, 0, 0]
    assert [p.name for p in claimants.lock_dir.iterdir()] == ["gpu0.lock"]  # tried no other
    assert is_locked(claimants.lock_dir / "gpu0.lock")


def test_resolve_device_claims_once_per_process(claimants: Claimants, tmp_path: Path) -> None:
    env = {**os.environ, "PSA_GPU_LOCK_DIR": str(claimants.lock_dir)}
    env.pop("SLURM_JOB_ID", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    hold_first = hold(claimants.lock_dir / "gpu0.lock")
    proc = claimants.spawn(["-c", RESOLVER], env=env)
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(6)]
    assert lines == ["set_device 1", "cuda:1"] * 3
    assert sorted(p.name for p in claimants.lock_dir.iterdir()) == ["gpu0.lock", "gpu1.lock"]
    assert is_locked(claimants.lock_dir / "gpu1.lock")
    hold_first.close()


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0,1"},
        {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "2,3"},
        {"SLURM_JOB_ID": "7", "SLURM_STEP_GPUS": "1"},
    ],
)
def test_a_slurm_allocation_is_used_as_it_is(tmp_path: Path, env: dict[str, str]) -> None:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    assert gpu_claim.claim_gpu(4, visible, tmp_path / "locks", env) is None
    assert not (tmp_path / "locks").exists()


def test_slurm_without_a_gpu_allocation_claims_like_a_workstation() -> None:
    assert not gpu_claim.slurm_allocated({"SLURM_JOB_ID": "7"})
    assert not gpu_claim.slurm_allocated({"CUDA_VISIBLE_DEVICES": "0"})


def test_one_visible_device_is_not_claimed(tmp_path: Path) -> None:
    assert gpu_claim.claim_gpu(1, None, tmp_path / "locks", {}) is None
    assert not (tmp_path / "locks").exists()


def test_physical_ids() -> None:
    assert gpu_claim.physical_ids(3, None) == ["0", "1", "2"]
    assert gpu_claim.physical_ids(2, "3,1") == ["3", "1"]
    assert gpu_claim.physical_ids(1, "GPU-1a2b/c,5") == ["GPU-1a2b_c"]


def test_lock_dir_is_per_user_unless_set(tmp_path: Path) -> None:
    default = Path(tempfile.gettempdir()) / f"psa-gpu-locks-{os.getuid()}"
    assert gpu_claim.gpu_lock_dir({}) == default
    assert gpu_claim.gpu_lock_dir({"PSA_GPU_LOCK_DIR": str(tmp_path)}) == tmp_path


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Four fake visible GPUs; records claim_gpu and set_device calls."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))

    def fake_claim(count: int, *args: object) -> int:
        calls.append(("claim", count))
        return 2

    monkeypatch.setattr(device, "claim_gpu", fake_claim)
    return calls


def test_explicit_cuda_index_is_used_as_is(fake_gpus: list[tuple]) -> None:
    assert device.resolve_device("cuda:3") == torch.device("cuda:3")
    assert fake_gpus == []
    with pytest.raises(PsaError, match="sees 4 GPU"):
        device.resolve_device("cuda:4")
    with pytest.raises(PsaError, match="unknown"):
        device.resolve_device("cuda:x")


def test_auto_and_cuda_use_the_claimed_device(fake_gpus: list[tuple]) -> None:
    assert device.resolve_device("auto") == torch.device("cuda:2")
    assert device.resolve_device("cuda") == torch.device("cuda:2")
    assert fake_gpus == [("claim", 4), ("set_device", 2)] * 2
    assert device.resolve_device("cpu") == torch.device("cpu")
