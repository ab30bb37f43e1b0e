"""The trainer's optimizer: torch AdamW, with torch's fused kernel wherever it has one for the parameters.

Why fused: one kernel updates each parameter instead of a chain of per-operation foreach passes over all
parameters, which on CPU makes the AdamW step several times cheaper for a 135M model, and it is what
transformers' Trainer (so TRL's SFTTrainer) uses by default since torch 2.8 (`adamw_torch_fused`). The update is
the same AdamW up to rounding. DeepSpeed steps it like any client optimizer: ZeRO hands it flattened fp32
partitions, bf16 training hands it fp32 master weights, both on the device the kernel was chosen for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FUSED_DEVICE_TYPES = ("cpu", "cuda")  # torch has fused AdamW kernels for these (and the parameters' floating dtypes)


def fused_supported(params: list[Any]) -> bool:
    """True when every parameter is a floating-point tensor on a device type torch's fused AdamW handles."""
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICE_TYPES for p in params)


def adamw(params: Iterable[Any], *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> Any:
    """torch.optim.AdamW over `params`, fused where supported (else torch's default foreach implementation)."""
    import torch

    params = list(params)
    fused = fused_supported(params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True if fused else None)
