"""Held-out weighted loss and accuracy of any checkpoint, with exactly the training loss definition.

sum(weight x CE) over all held-out rows / sum of their num_seqs, computed on padding-free packed
batches. The trainer reports the same numbers per epoch; this standalone version scores a
checkpoint or registered model after the fact (`openchat eval --heldout`), e.g. a champion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def heldout_metrics(model_dir: Path | str, tokens_path: Path | str, batch_max_len: int = 4096, model: Any = None) -> dict[str, float]:
    import torch

    from openchat_core.training.data import TokenDataset, sequential_batches
    from openchat_core.training.loss import weighted_sums
    from openchat_core.models.adapters import load_model

    if model is None:
        model, _ = load_model(model_dir, packed=True)  # full weights, or a LoRA adapter on its base
    dataset = TokenDataset(tokens_path, max_len=batch_max_len, overlong="truncate")
    loss = acc = norm = 0.0
    model.eval()
    with torch.no_grad():
        for indices in sequential_batches(dataset.lengths, batch_max_len):
            l, a, _ = weighted_sums(model, dataset.batch(indices))
            loss, acc, norm = loss + l.item(), acc + a.item(), norm + float(dataset.num_seqs[indices].sum())
    if norm <= 0:
        raise ValueError(f"{tokens_path} holds no supervised tokens: nothing to evaluate")
    return {"eval/loss": loss / norm, "eval/accuracy": acc / norm}
