"""What every generation route shares: leases on the live model, client-disconnect handling, error mapping,
model-name and response-format checks, and the accounting that feeds /metrics and the request log.

Chat completions (`chat.py`) and completions (`completions.py`) differ only in how a prompt is
built and how the answer is shaped; everything here is the same for both, so keys, errors,
limits and metrics apply to every route the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from openchat_core.serving.engines.base import (
    Delta,
    EngineRequestError,
    EngineUnavailableError,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)
from openchat_core.serving.errors import OpenAIError
from openchat_core.serving.metrics import LOG_STATE_KEY, ServingMetrics
from openchat_core.serving.protocol import ResponseFormat, SamplingFields, Usage
from openchat_core.serving.runtime import ModelManager, ModelRuntime
from openchat_core.serving.settings import ServeSettings

logger = logging.getLogger("openchat_core.serving")

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the completion was ready."""


@dataclass
class Lease:
    """An in-flight slot on one runtime; `release` is idempotent (called from several exit paths)."""

    runtime: ModelRuntime
    metrics: ServingMetrics
    released: bool = False

    def __post_init__(self) -> None:
        self.runtime.acquire()
        self.metrics.in_flight.inc()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.runtime.release()
            self.metrics.in_flight.dec()


def engine_error(exc: Exception) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, EngineRequestError):
        return OpenAIError(400, f"The engine rejected the request: {exc}", code="invalid_request")
    if isinstance(exc, EngineUnavailableError):
        return OpenAIError(503, f"The model is not available right now ({exc}); retry shortly.", code="engine_unavailable")
    logger.error("generation failed: %s", exc, exc_info=exc)
    return OpenAIError(500, "Generation failed; the server log has the details.", type="server_error", code="engine_error")


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body was already read by FastAPI)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and raising ClientDisconnected) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientDisconnected()


def params_for_log(options: SamplingOptions) -> dict[str, Any]:
    return {"max_tokens": options.max_tokens, "temperature": options.temperature, "top_p": options.top_p,
            "seed": options.seed, "presence_penalty": options.presence_penalty,
            "frequency_penalty": options.frequency_penalty, "stop_sequences": len(options.stop)}


def json_response(model: Any) -> Response:
    return Response(content=model.model_dump_json(), media_type="application/json")


def check_model(name: str | None, runtime: ModelRuntime) -> None:
    """404 unless `name` (when given) is one of the live model's names."""
    if name is not None and name not in runtime.names:
        raise OpenAIError(404, f"The model `{name}` does not exist; this server serves "
                               f"{', '.join(runtime.names)} (see GET /v1/models).", param="model", code="model_not_found")


def check_request(body: SamplingFields, runtime: ModelRuntime) -> StructuredOutput | None:
    """The checks every generation route makes first: model name, unsupported fields, response format."""
    check_model(body.model, runtime)
    unsupported = body.unsupported_feature()  # type: ignore[attr-defined]
    if unsupported is not None:
        raise OpenAIError(400, unsupported[1], param=unsupported[0], code="unsupported_parameter")
    return structured_output(body.response_format, runtime)


def context_length_error(max_context: int, prompt_len: int, completion: int, where: str, param: str,
                         note: str = "") -> OpenAIError:
    """OpenAI's context-length message, with the numbers; `where` is e.g. "the messages" or "prompt 2"."""
    return OpenAIError(400, f"This model's maximum context length is {max_context} tokens. However, you requested "
                            f"{prompt_len + completion} tokens ({prompt_len} in {where}, {completion} in the "
                            f"completion{note}). Please reduce the length of the {param} or completion.",
                       param=param, code="context_length_exceeded")


def sampling_options(body: SamplingFields, *, max_tokens: int, stop_token_ids: tuple[int, ...],
                     default_temperature: float, **extra: Any) -> SamplingOptions:
    """The engine options both routes derive the same way from the shared request fields."""
    temperature = getattr(body, "temperature", None)
    return SamplingOptions(
        max_tokens=max_tokens,
        stop_token_ids=stop_token_ids,
        n=body.n_choices,
        temperature=default_temperature if temperature is None else temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=tuple(body.stop_sequences),
        stream=bool(body.stream),
        **extra,
    )


def structured_output(response_format: ResponseFormat | None, runtime: ModelRuntime) -> StructuredOutput | None:
    """The engine-level constraint for `response_format`; a 400 naming the engine that can do it when this one cannot."""
    if response_format is None or not response_format.constrained:
        return None
    if not getattr(runtime.engine, "supports_structured_output", False):
        raise OpenAIError(400, f"response_format {response_format.type} (structured output) needs the vllm engine; this "
                               f"server runs the {runtime.engine_kind} engine. Restart it with --engine vllm in the "
                               f"serving env, or drop response_format.", param="response_format",
                          code="unsupported_parameter")
    if response_format.type == "json_object":
        return StructuredOutput("json_object")
    assert response_format.json_schema is not None
    return StructuredOutput("json_schema", response_format.json_schema.schema_)


@dataclass
class ChoiceState:
    """Per-choice accumulation: text (with OpenChat's first-space strip for chat), token ids, logprobs."""

    strip_first_space: bool = True
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    started: bool = False

    def add(self, delta: Delta) -> str:
        text = delta.text
        if not self.started and text:
            self.started = True
            if self.strip_first_space and text.startswith(" "):
                text = text[1:]
        self.text += text
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        return text


@dataclass
class Accounting:
    """What one request produced, for usage, metrics and the request log."""

    prompt_tokens: int
    choices: list[ChoiceState]
    completion_tokens: int = 0
    first_token_at: float | None = None
    started_at: float = field(default_factory=time.perf_counter)

    def add(self, delta: Delta) -> str:
        if delta.token_ids and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.completion_tokens += len(delta.token_ids)
        return self.choices[delta.index].add(delta)

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def account(self, metrics: ServingMetrics, record: dict[str, Any], log_outputs: bool) -> None:
        metrics.completion_tokens.inc(self.completion_tokens)
        ttft = None
        if self.first_token_at is not None:
            ttft = self.first_token_at - self.started_at
            metrics.ttft.observe(ttft)
        record.update({"completion_tokens": self.completion_tokens, "ttft_s": round(ttft, 4) if ttft is not None else None,
                       "finish_reasons": [c.finish_reason for c in self.choices]})
        if log_outputs:
            record["outputs"] = [c.text for c in self.choices]


class GenerationService:
    """The request flow both generation routes share; subclasses say how to prepare, run and shape a request.

    One runtime is resolved per request (it stays on that model even if a switch happens) and
    leased until the answer is out; a client that leaves aborts the engine request; every exit
    path accounts tokens and writes the request-log record.
    """

    def __init__(self, settings: ServeSettings, manager: ModelManager, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics

    async def prepare(self, body: Any, runtime: ModelRuntime) -> Any:
        raise NotImplementedError

    def begin(self, body: Any, prep: Any, record: dict[str, Any]) -> Accounting:
        """Record what was asked, count the prompt tokens, return the request's accounting."""
        raise NotImplementedError

    async def collect(self, prep: Any, acct: Accounting) -> None:
        raise NotImplementedError

    def stream(self, prep: Any, acct: Accounting) -> AsyncIterator[str]:
        """The server-sent chunks of one request (raising on an engine failure)."""
        raise NotImplementedError

    async def _events(self, prep: Any, acct: Accounting, lease: Lease, record: dict[str, Any]) -> AsyncIterator[str]:
        """`stream`'s chunks; an error becomes one error event; always `[DONE]`, the abort if unfinished, accounting."""
        try:
            async with aclosing(self.stream(prep, acct)) as chunks:  # closing it closes (aborts) the engine stream
                async for chunk in chunks:
                    yield chunk
        except Exception as exc:
            error = engine_error(exc)
            record["error"] = error.message
            yield f"data: {json.dumps(error.body())}\n\n"
        else:
            record.pop("error", None)
        finally:
            if not acct.finished:
                record.setdefault("error", "client disconnected")
                await self.abort(prep)
            self.account(prep, acct, record)
            lease.release()
        yield "data: [DONE]\n\n"

    def respond(self, prep: Any, acct: Accounting) -> Any:
        raise NotImplementedError

    async def abort(self, prep: Any) -> None:
        raise NotImplementedError

    def account(self, prep: Any, acct: Accounting, record: dict[str, Any]) -> None:
        acct.account(self.metrics, record, self.settings.log_prompts)

    async def create(self, body: Any, raw: Request) -> Response:
        record: dict[str, Any] = raw.scope.get("state", {}).get(LOG_STATE_KEY, {})
        record.update({"model": body.model, "n": body.n_choices, "stream": bool(body.stream)})
        runtime = self.manager.live()  # one model per request, even across a switch; ModelSwitchError has its handler
        lease = Lease(runtime, self.metrics)
        handed_off = False
        try:
            record.update({"served_name": runtime.served_name, "registry_version": runtime.registry_version,
                           "adapter": getattr(runtime.adapter_for(body.model), "name", None),
                           "engine": runtime.engine_kind})
            prep = await self.prepare(body, runtime)
            acct = self.begin(body, prep, record)
            if body.stream:
                response = StreamingResponse(self._events(prep, acct, lease, record), media_type="text/event-stream",
                                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                             background=BackgroundTask(lease.release))
                handed_off = True
                return response
            try:
                await until_disconnect(raw, self.collect(prep, acct))
            except ClientDisconnected:
                record["error"] = "client disconnected"
                await self.abort(prep)  # the engine may not abort on cancellation alone
                return Response(status_code=499)
            except Exception as exc:
                error = engine_error(exc)
                record["error"] = error.message
                raise error from exc
            finally:
                self.account(prep, acct, record)
            return json_response(self.respond(prep, acct))
        except OpenAIError as exc:
            record.setdefault("error", exc.message)
            raise
        finally:
            if not handed_off:
                lease.release()
