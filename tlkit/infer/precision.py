"""Inference numeric precision: fp32, or bfloat16 autocast where the hardware computes it natively.

On CPUs with AMX or AVX512-BF16 (recent Xeons) and on bf16-capable GPUs, bf16 autocast speeds up convolutions
and matmuls while weights stay fp32; elsewhere bf16 is emulated and slower, so `auto` picks it only when native.
fp32 stays the default: scripts/bench.py measured bf16 2.6x faster on an AMX Xeon, but it flipped 1 of 153
hymenoptera predictions of a fine-tuned model, so bf16 is opt-in (measured on the benchmarks page of the docs).
"""

from __future__ import annotations

import contextlib

import torch

from tlkit.errors import did_you_mean
from tlkit.infer.settings import PRECISIONS  # noqa: E402


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True when `device` computes bfloat16 natively (CPU: AMX or AVX512-BF16; CUDA: compute capability >= 8)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> str:
    """'auto' -> 'bf16' when native on `device`, else 'fp32'; 'fp32'/'bf16' are returned as given."""
    if requested not in PRECISIONS:
        raise ValueError(
            f"Unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}.{did_you_mean(requested, PRECISIONS)}"
        )
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision ('fp32' = a no-op context)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
