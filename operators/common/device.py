"""Device choice and mixed precision, shared by every model operator."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks the first CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available on this machine")
    return resolved


def autocast(device: torch.device, dtype: str | None):
    """bf16/fp16 autocast on CUDA when asked for; a no-op on the CPU, where it only slows things down."""
    if dtype in (None, "float32", "fp32") or device.type != "cuda":
        return contextlib.nullcontext()
    torch_dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                   "float16": torch.float16, "fp16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return torch.autocast(device_type="cuda", dtype=torch_dtype)
