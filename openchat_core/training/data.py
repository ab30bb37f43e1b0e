"""Pretokenized data for training: zero-copy columns and padding-free packed batches.

Reads OpenChat's Parquet (from `openchat pretokenize` or OpenChat's own generate_dataset) into
flat numpy arrays + offsets, so assembling a batch is a few slices and one concatenation.
A packed batch is one row: the batch's sequences back to back, `position_ids` restarting at 0 for
each sequence. That is what makes stock transformers models build a block-diagonal attention
mask (with `attention_mask=None` and `use_cache=False`; see DESIGN.md, Training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openchat_core.data.pretokenize import read_metadata

if TYPE_CHECKING:
    import torch

LIST_COLUMNS = ("nz_input_ids", "nz_position_ids", "nz_shifted_label_ids", "nz_shifted_loss_weights")


@dataclass
class PackedBatch:
    """One rank's batch for one step, as tensors of shape [1, T] (ids, positions) and [T] (labels, weights)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    seqlens: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[-1])

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.labels.to(device),
                           self.weights.to(device), self.seqlens)


class TokenDataset:
    """A pretokenized file held as flat arrays; `lengths`/`num_seqs` feed the multipack sampler.

    `overlong="truncate"` cuts sequences longer than `max_len` to `max_len` tokens (and recomputes
    their num_seqs); `"error"` refuses them with the count and the longest length.
    """

    def __init__(self, path: Path | str, max_len: int | None = None, overlong: Literal["error", "truncate"] = "error") -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        table = pq.read_table(self.path, memory_map=True)
        self._values: dict[str, np.ndarray] = {}
        offsets = None
        for name in LIST_COLUMNS:
            column = table.column(name).combine_chunks() if table.num_rows else pa.array([], table.schema.field(name).type)
            offsets = column.offsets.to_numpy().astype(np.int64)
            self._values[name] = column.values.to_numpy(zero_copy_only=False)
        self._offsets = offsets if offsets is not None else np.zeros(1, np.int64)
        self.full_lengths = table.column("total_length").to_numpy().astype(np.int64)
        self.num_seqs = table.column("num_seqs").to_numpy().astype(np.float64)
        self.lengths = self.full_lengths.copy()
        self.truncated = np.zeros(0, dtype=np.int64)
        if max_len is not None:
            self._apply_overlong(max_len, overlong)

    def _apply_overlong(self, max_len: int, policy: str) -> None:
        over = np.flatnonzero(self.full_lengths > max_len)
        if not len(over):
            return
        if policy == "error":
            raise ValueError(
                f"{self.path}: {len(over)} sequence(s) are longer than batch_max_len={max_len} (longest "
                f"{int(self.full_lengths.max())} tokens, e.g. rows {over[:5].tolist()}). Raise train.batch_max_len to at "
                f"least {int(self.full_lengths.max())} (rounded up to a multiple of 64), or set train.overlong=truncate.")
        self.truncated = over
        self.lengths[over] = max_len
        weights = self._values["nz_shifted_loss_weights"]
        for i in over:  # num_seqs of the kept prefix, summed as OpenChat sums it (left to right, float64)
            start = self._offsets[i]
            self.num_seqs[i] = float(np.cumsum(weights[start:start + max_len].astype(np.float64))[-1])

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def model_type(self) -> str:
        return self.metadata["model_type"]

    def supervised_ratio(self) -> float:
        """Share of tokens with a non-zero loss weight (drives OpenChat's automatic learning rate)."""
        weights = self._values["nz_shifted_loss_weights"]
        return float(np.count_nonzero(weights) / max(1, len(weights)))

    def batch(self, indices: np.ndarray) -> PackedBatch:
        """Concatenate the given rows (truncated per the policy) into one padding-free batch."""
        import torch

        starts = self._offsets[indices]
        lens = self.lengths[indices]
        gather = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens)]) if len(indices) else np.zeros(0, np.int64)
        ids = torch.from_numpy(self._values["nz_input_ids"][gather].astype(np.int64))
        positions = torch.from_numpy(self._values["nz_position_ids"][gather].astype(np.int64))
        labels = torch.from_numpy(self._values["nz_shifted_label_ids"][gather].astype(np.int64))
        weights = torch.from_numpy(self._values["nz_shifted_loss_weights"][gather].astype(np.float32))
        return PackedBatch(ids.unsqueeze(0), positions.unsqueeze(0), labels, weights, lens.tolist())

    def digest(self) -> str:
        """The data identity recorded with checkpoints: the pretokenized file's source digest and options."""
        meta = self.metadata
        return f"{meta.get('source_digest', 'unknown')}:{meta.get('tokenizer_fingerprint', 'unknown')}:{meta.get('model_type')}"
