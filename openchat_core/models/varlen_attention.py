"""`sdpa_varlen`: variable-length attention for packed rows, built from torch's sdpa, for CPUs and GPUs without flash-attn.

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

from typing import Any

NAME = "sdpa_varlen"


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


def register() -> str:
    """Make `attn_implementation="sdpa_varlen"` available to transformers models (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, sdpa_varlen_attention)
    return NAME
