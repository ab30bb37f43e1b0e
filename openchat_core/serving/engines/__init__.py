"""Engines behind one small async interface (see `base`); `create_engine` picks one by name.

The concrete engines import torch/transformers/vLLM lazily, so choosing one never imports the other.
"""

from __future__ import annotations

from openchat_core.serving.engines.base import (
    Delta,
    Engine,
    EngineConfig,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)

ENGINE_KINDS = ("vllm", "transformers")


def create_engine(kind: str, config: EngineConfig) -> Engine:
    """A not-yet-started engine of `kind` for `config` (call `await engine.start()`)."""
    if kind == "vllm":
        from openchat_core.serving.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    if kind == "transformers":
        from openchat_core.serving.engines.transformers_engine import TransformersEngine

        return TransformersEngine(config)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")


__all__ = ["ENGINE_KINDS", "Delta", "Engine", "EngineConfig", "EngineError", "EngineRequestError",
           "EngineUnavailableError", "SamplingOptions", "StructuredOutput",
           "TokenLogprob", "create_engine"]
