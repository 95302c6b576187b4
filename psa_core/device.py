"""Device selection: the one place that decides between CUDA and CPU."""

from __future__ import annotations

import torch

from psa_core.errors import PsaError


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config value to a torch device.

    Args:
        name: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PsaError(f"device '{name}': CUDA is not available here; set device: auto or cpu")
        return torch.device(name)
    raise PsaError(f"device '{name}': unknown; use auto, cpu, cuda or cuda:N")


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
