"""`registry:` settings: the registered model's name, the promotion margin and how LoRA runs are registered."""

from __future__ import annotations

from pydantic import Field

from openchat_core.section import Section


class RegistryConfig(Section):
    model_name: str | None = Field(None, description="registered model name; default: the pipeline name")
    promotion_margin: float = Field(0.0, ge=0, description="candidate must beat the champion by at least this much")
    merge_adapter: bool = Field(False, description="LoRA runs: register the base with the adapter merged in (a full checkpoint) "
                                                   "instead of the adapter and its base lineage")
