"""The engine interface: token ids in, text/token deltas out, per request, concurrently.

The app owns everything about chat (templates, conditions, the OpenAI protocol, context limits);
an engine only turns prompt token ids into a stream of `Delta`s and must batch concurrent
requests itself. Implementations: `VLLMEngine` (vLLM's AsyncLLM), `TransformersEngine`
(continuous batching over a Hugging Face model), and the in-memory fake the unit tests use.

Contract:
- `await start()` loads the model; `ready` is True afterwards (False again after a fatal error).
- `generate(request_id, prompt_ids, options)` is an async iterator of `Delta`s; for every choice
  index in `range(options.n)` exactly one delta carries a `finish_reason` ("stop" or "length"),
  and nothing for that index follows it. Stop tokens are counted in `token_ids` but never
  appear in `text`. Closing the iterator early (client gone) aborts the request.
- `await abort(request_id)` stops a request; idempotent, unknown ids are ignored.
- `await shutdown()` frees the model; requests still running fail with `EngineUnavailableError`.
- Log-probabilities: with `options.logprobs = k` every generated token's delta carries a
  `TokenLogprob` (the model's raw log-probability of that token, before temperature and penalties,
  plus the k most likely tokens); with `options.prompt_logprobs = k` the deltas also carry the
  prompt's (None for the first prompt token, which has no context), in order, possibly spread over
  several deltas: the consumer concatenates them.
- LoRA (`supports_adapters`, vLLM): `await load_adapter(name, path, rank)` registers an adapter on the
  loaded base and returns its `LoraAdapter`; a request whose `options.adapter` is set is answered
  by the base plus that adapter; `await remove_adapter(adapter)` frees it. The engine must have
  been configured with `max_lora_rank` (LoRA on) for this.
- `supports_structured_output`: whether `options.structured` (JSON object / JSON schema constrained
  decoding) is honoured; an engine without it raises `EngineRequestError` when asked.

Light module: no torch, no vLLM.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class StructuredOutput:
    """Constrained decoding: any JSON object (`schema` None), or JSON valid against `schema`."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there, its log-probability, and the most likely tokens (most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter loaded into an engine: `name` is the `model` clients ask for, `adapter_id` the engine's id (> 0)."""

    name: str
    path: Path
    adapter_id: int
    rank: int


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request generation parameters, already validated by the protocol layer."""

    max_tokens: int
    stop_token_ids: tuple[int, ...]
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stream: bool = True  # False: the consumer only needs the end result, so an engine may send one delta per choice
    logprobs: int | None = None  # top-k log-probabilities of every generated token (0: only the token's own)
    prompt_logprobs: int | None = None  # the same for every prompt token
    structured: StructuredOutput | None = None
    adapter: LoraAdapter | None = None  # answer with the base plus this LoRA adapter (engines with supports_adapters)


@dataclass(frozen=True)
class Delta:
    """New output of one choice: text (may be empty), the new token ids, and the finish reason if it ended."""

    index: int
    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token in `token_ids` when options.logprobs is set
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()  # the next prompt positions, when options.prompt_logprobs


@dataclass(frozen=True)
class EngineConfig:
    """What every engine needs to load a checkpoint (built from the server settings)."""

    model_dir: Path
    max_model_len: int
    dtype: str = "float32"
    max_num_seqs: int = 32
    seed: int = 0
    kv_cache_gib: float | None = None
    enforce_eager: bool = True
    threads: int | None = None  # transformers engine: torch intra-op threads (None: half the cores)
    max_lora_rank: int | None = None  # LoRA per request on (vLLM): the largest adapter rank to accept; None: off
    max_loras: int = 1  # adapters in one batch
    extra: dict[str, object] = field(default_factory=dict)


class EngineError(RuntimeError):
    """Base class of engine failures the app maps to HTTP errors."""


class EngineRequestError(EngineError, ValueError):
    """The engine rejected the request's parameters (HTTP 400)."""


class EngineUnavailableError(EngineError):
    """The engine is shut down or dead (HTTP 503)."""


@runtime_checkable
class Engine(Protocol):
    name: str
    supports_structured_output: bool

    @property
    def ready(self) -> bool: ...

    @property
    def max_context(self) -> int: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def generate(self, request_id: str, prompt_ids: list[int], options: SamplingOptions) -> AsyncIterator[Delta]: ...

    async def abort(self, request_id: str) -> None: ...


async def shielded_abort(engine: Engine, request_id: str) -> None:
    """Abort a request even inside a cancelled scope: Starlette cancels a stream's task when the client leaves,
    and anyio then cancels every await in that scope, the abort included, unless it is shielded."""
    import anyio

    with anyio.CancelScope(shield=True):
        try:
            await engine.abort(request_id)
        except Exception:  # aborting a finished or unknown request is not an error
            logging.getLogger("openchat_core.serving").debug("abort of %s failed", request_id, exc_info=True)
