"""Pick a generation engine for a checkpoint (the engines share the interface in `generation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from openchat_core.evaluation.generation import Generator
from openchat_core.evaluation.transformers_generator import TransformersGenerator
from openchat_core.evaluation.vllm_generator import VLLMGenerator
from openchat_core.models.checkpoint import is_adapter_checkpoint
from openchat_core.serve_env import find_serve_python

EngineKind = Literal["auto", "vllm", "transformers"]


def make_generator(kind: EngineKind | str, model_dir: Path | str, **options: Any) -> Generator:
    """An engine for a checkpoint. `auto`: vLLM when the serving environment exists (and the checkpoint
    holds full weights; the vLLM generator does not load LoRA adapters yet), else transformers.

    `options` go to the engine's constructor (`stop_token_ids`, `model_type`, `dtype`, and
    engine-specific ones such as `batch_size` or `max_model_len`).
    """
    if kind == "auto":
        kind = "vllm" if find_serve_python() is not None and not is_adapter_checkpoint(model_dir) else "transformers"
    if kind == "vllm":
        if is_adapter_checkpoint(model_dir):
            raise ValueError(f"{model_dir} is a LoRA adapter: evaluate it with engine 'transformers' (or 'auto'), "
                             f"or merge it first (registry.merge_adapter: true)")
        return VLLMGenerator(model_dir, **options)
    if kind == "transformers":
        return TransformersGenerator.from_checkpoint(model_dir, **options)
    raise ValueError(f"unknown engine {kind!r}; use 'auto', 'vllm' or 'transformers'")
