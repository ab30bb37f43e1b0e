"""`model:` settings: which base model to load and how (beside the loader that reads them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from openchat_core.section import Section


class ModelConfig(Section):
    base: str = Field("preset:tiny-mistral", description="local HF model folder or preset:NAME")
    dtype: Literal["float32", "bfloat16"] = "float32"
    attn_implementation: Literal["auto", "sdpa_varlen", "torch_varlen", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA when installed, else torch_varlen (torch's built-in varlen "
                            "attention) on CUDA, else sdpa_varlen (sdpa per packed sequence)")
    add_missing_special_tokens: bool = Field(False, description="add the template's special tokens (mean-initialised) if missing")
