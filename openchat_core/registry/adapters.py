"""What the registry stores for a LoRA checkpoint: the adapter with lineage tags naming its base, or a merged full checkpoint.

An adapter version is small (the adapter weights) and is only usable with its base, so the base's
location and the adapter settings are tags on the version; `registry.merge_adapter: true` instead
registers the base with the adapter folded in, which every engine and MLflow consumer loads as-is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openchat_core.models.adapters import merge_adapter
from openchat_core.models.checkpoint import adapter_base_path, is_adapter_checkpoint, read_checkpoint, weights_file

MERGED_PREFIX = "merged_"  # merged_ep_N: not matched by the ep_* glob of epoch checkpoints


@dataclass(frozen=True)
class Registrable:
    checkpoint: Path     # the folder to log as the model version
    weights_file: Path   # whose digest identifies the weights (an unchanged re-run is not registered twice)
    tags: dict[str, str]


def registrable(checkpoint: Path | str, *, merge_adapter_weights: bool = False) -> Registrable:
    """The folder, weights file and lineage tags to register for a training checkpoint (merging an adapter when asked)."""
    path = Path(checkpoint)
    if not is_adapter_checkpoint(path):
        return Registrable(path, weights_file(path), {"openchat.adapter": "none"})
    adapter = read_checkpoint(path).metadata.get("adapter") or {}
    lineage = {"openchat.adapter.type": str(adapter.get("type", "lora")), "openchat.adapter.base_model": str(adapter_base_path(path)),
               "openchat.adapter.r": str(adapter.get("r", "")), "openchat.adapter.target_modules": str(adapter.get("target_modules", ""))}
    if merge_adapter_weights:
        merged = merge_adapter(path, path.with_name(MERGED_PREFIX + path.name))
        return Registrable(merged, weights_file(merged),
                           {"openchat.adapter": "merged", "openchat.adapter.source": str(path.resolve()), **lineage})
    return Registrable(path, weights_file(path), {"openchat.adapter": "lora", **lineage})
