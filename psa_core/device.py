"""Device selection: the one place that decides between CUDA and CPU."""

from __future__ import annotations

import os
import re

import torch

from psa_core.errors import PsaError
from psa_core.gpu_claim import claim_gpu, gpu_lock_dir


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config value to a torch device.

    With several visible GPUs, "auto" and "cuda" claim a free one for this process
    through a lock file (`psa_core.gpu_claim`), so parallel jobs on a workstation
    spread over the cards; later calls return the same device. "cuda:N" is used
    as given, and a SLURM job uses the GPUs of its allocation.

    Args:
        name: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    """
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    pinned = re.fullmatch(r"cuda:(\d+)", name)
    if name not in ("auto", "cuda") and not pinned:
        raise PsaError(f"device '{name}': unknown; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise PsaError(f"device '{name}': CUDA is not available here; set device: auto or cpu")
    if pinned:
        count = torch.cuda.device_count()
        if int(pinned[1]) >= count:
            raise PsaError(
                f"device '{name}': this job sees {count} GPU(s), cuda:0 to cuda:{count - 1} "
                "(CUDA_VISIBLE_DEVICES renumbers them); pick one of those or set device: auto"
            )
        return torch.device(name)
    index = claim_gpu(
        torch.cuda.device_count(),
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        gpu_lock_dir(os.environ),
        os.environ,
    )
    if index is None:
        return torch.device("cuda")
    torch.cuda.set_device(index)  # a stray bare "cuda" lands on the claimed card too
    return torch.device("cuda", index)


AMP_DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Autocast choices by config name ("none": full float32)."""


def autocast_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """Map an `amp` config value ("none", "bfloat16", "float16") to a dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    aliases = {"bf16": "bfloat16", "fp16": "float16"}
    key = aliases.get(name, name)
    if key not in AMP_DTYPES:
        raise PsaError(f"amp '{name}': unknown; use none, bfloat16 or float16")
    return AMP_DTYPES[key]
