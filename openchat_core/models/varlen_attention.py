"""Variable-length attention for packed rows without flash-attn: `torch_varlen` (CUDA) and `sdpa_varlen` (everywhere).

`torch_varlen` wraps torch's own `torch.nn.attention.varlen.varlen_attn` (flash/cuDNN kernels
shipped inside the CUDA torch wheel, cu_seqlens like flash-attn's): no extra package, so GPU
machines without a CUDA toolchain (flash-attn is an sdist) still get varlen kernels.

A packed row holds several sequences back to back. Stock sdpa attends over the whole row with a
block-diagonal mask, which still computes the full T x T score matrix: on a 2048-token row of
~100-token sequences that is ~20x more attention work than needed. This implementation splits
the row at the position-id restarts (what flash-attn's varlen kernels do with cu_seqlens) and
runs causal sdpa per sequence, so attention costs sum(L_i^2) instead of T^2.

It is registered with transformers' AttentionInterface under the name `sdpa_varlen`; because no
mask function is registered for it, transformers builds no T x T mask at all. It supports exactly
the trainer's input: one packed row, `attention_mask=None`, no KV cache. Checkpoints are saved
with `sdpa` as their attention, so nothing downstream needs this module.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

NAME = "sdpa_varlen"
TORCH_VARLEN = "torch_varlen"


def torch_varlen_available() -> bool:
    """torch's built-in varlen attention exists in this torch and CUDA is present (its kernels are CUDA-only)."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def cu_seqlens(position_ids: Any, length: int) -> tuple[Any, int]:
    """Cumulative sequence starts (int32, as flash-style kernels take them) and the longest sequence, from position-id restarts."""
    import torch

    flat = position_ids.reshape(-1)[:length]
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    bounds = torch.cat([starts, torch.tensor([length], dtype=starts.dtype, device=starts.device)]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


def torch_varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """One packed row through torch's varlen kernel: (1, H, T, D) -> (1, T, H, D), causal within each sequence."""
    from torch.nn.attention.varlen import varlen_attn

    if query.shape[0] != 1 or attention_mask is not None or query.shape[2] != key.shape[2]:
        raise NotImplementedError(f"{TORCH_VARLEN} handles one packed row without padding or KV cache (the trainer's batches); "
                                  f"use attn_implementation='sdpa' for padded batches or generation")
    if dropout and module.training:
        raise NotImplementedError(f"{TORCH_VARLEN} has no attention dropout; set the model's attention_dropout to 0")
    length = query.shape[2]
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        import torch

        position_ids = torch.arange(length, device=query.device)
    cu, longest = cu_seqlens(position_ids, length)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, H, D)
    k, v, options = _varlen_call_options(varlen_attn, q, k, v)
    out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **options)
    return out.unsqueeze(0), None


def _varlen_call_options(varlen_attn: Any, q: Any, k: Any, v: Any) -> tuple[Any, Any, dict[str, Any]]:
    """K, V and the keyword arguments for causal, grouped-query attention, as this torch's `varlen_attn` takes them.

    torch 2.11 (the GPU image) takes `is_causal` and has no `enable_gqa`; later releases take `window_size=(-1, 0)` and
    `enable_gqa`. Where the kernel cannot group heads itself, K/V heads are repeated here, as `enable_gqa` would."""
    params = _parameter_names(varlen_attn)
    options: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and "enable_gqa" in params:
        options["enable_gqa"] = True
    elif groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return k, v, options


@functools.cache
def _parameter_names(function: Any) -> frozenset[str]:
    """A function's parameter names, read once per function: the attention call runs per layer per step."""
    return frozenset(inspect.signature(function).parameters)


def sdpa_varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                          scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    import torch
    import torch.nn.functional as F

    if query.shape[0] != 1 or attention_mask is not None or query.shape[2] != key.shape[2]:
        raise NotImplementedError(f"{NAME} handles one packed row without padding or KV cache (the trainer's batches); "
                                  f"use attn_implementation='sdpa' for padded batches or generation")
    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    if position_ids is None:
        starts = [0]
    else:
        starts = torch.nonzero(position_ids.reshape(-1)[:length] == 0).flatten().tolist() or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
    bounds = starts + [length]
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    outputs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=p, is_causal=True, scale=scaling)
               for s, e in zip(bounds[:-1], bounds[1:])]
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> str:
    """Make `attn_implementation=name` (sdpa_varlen or torch_varlen) available to transformers models (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, {NAME: sdpa_varlen_attention, TORCH_VARLEN: torch_varlen_attention}[name])
    return name
