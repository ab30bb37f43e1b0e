"""Pick a generation engine for a checkpoint (the engines share the interface in `generation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from openchat_core.evaluation.generation import Generator
from openchat_core.evaluation.transformers_generator import TransformersGenerator
from openchat_core.evaluation.vllm_generator import VLLMGenerator
from openchat_core.models.adapters import adapter_info, per_request_lora_problem
from openchat_core.models.checkpoint import is_adapter_checkpoint
from openchat_core.serve_env import find_serve_python

EngineKind = Literal["auto", "vllm", "transformers"]


def choose_engine(kind: EngineKind | str, model_dir: Path | str) -> str:
    """`auto` resolved (see `make_generator`); ValueError when `vllm` is asked for an adapter vLLM cannot apply."""
    problem = per_request_lora_problem(adapter_info(model_dir)) if is_adapter_checkpoint(model_dir) else None
    if kind == "auto":
        return "vllm" if find_serve_python() is not None and problem is None else "transformers"
    if kind == "vllm" and problem is not None:
        raise ValueError(f"engine 'vllm': {problem.replace('--engine transformers', 'engine transformers (or auto)')}")
    return kind


def make_generator(kind: EngineKind | str, model_dir: Path | str, **options: Any) -> Generator:
    """An engine for a checkpoint. `auto`: vLLM when the serving environment exists, else transformers.

    LoRA adapter checkpoints run on vLLM as their base plus the adapter (a LoRARequest), except
    adapters that replace whole modules (`modules_to_save`), which vLLM cannot apply: `auto` gives
    those to transformers (peft), and `vllm` refuses them saying so.

    `options` go to the engine's constructor (`stop_token_ids`, `model_type`, `dtype`, and
    engine-specific ones such as `batch_size` or `max_model_len`).
    """
    kind = choose_engine(kind, model_dir)
    if kind == "vllm":
        return VLLMGenerator(model_dir, **options)
    if kind == "transformers":
        return TransformersGenerator.from_checkpoint(model_dir, **options)
    raise ValueError(f"unknown engine {kind!r}; use 'auto', 'vllm' or 'transformers'")
