"""The training objective: weighted token cross-entropy on a padding-free packed batch.

loss = sum over tokens of weight x CE, later divided by the global num_seqs of the step (all
ranks), as OpenChat does; accuracy is the weight-weighted share of argmax hits. Logits are
computed only where the weight is non-zero (transformers' boolean `logits_to_keep`), which on
chat data skips most of the vocabulary projection without changing the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from openchat_core.training.data import PackedBatch


def packed_forward(model: Any, batch: PackedBatch, keep: torch.Tensor | None = None) -> Any:
    """Forward a packed row. `attention_mask=None` + `use_cache=False` make transformers detect the
    per-sequence position restarts and build a block-diagonal mask; either one missing silently gives
    a causal mask over the whole row (wrong logits, no error)."""
    kwargs = {"logits_to_keep": keep} if keep is not None else {}
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=None, use_cache=False, **kwargs)


def weighted_sums(model: Any, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of weight x CE, sum of weight x correct, sum of weights) over the batch's supervised tokens."""
    import torch
    import torch.nn.functional as F

    mask = batch.weights != 0
    if not bool(mask.any()):  # e.g. a row truncated before its first supervised token: keep one position at weight 0,
        mask = torch.zeros_like(mask)  # so every rank still runs forward/backward (ZeRO collectives need all ranks)
        mask[0] = True
    logits = packed_forward(model, batch, keep=mask.unsqueeze(0)).logits
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = batch.labels[mask]
    weights = batch.weights[mask]
    ce = F.cross_entropy(logits, labels, reduction="none")
    correct = (logits.detach().argmax(dim=-1) == labels).float()
    return (weights * ce).sum(), (weights * correct).sum(), weights.sum()
