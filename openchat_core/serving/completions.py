"""POST /v1/completions: raw prompts (text or token ids) -> engine -> OpenAI's legacy completion shape.

This is the route log-likelihood evaluation needs: lm-eval's `local-completions` sends its
context + continuation as token ids with `echo: true, logprobs: 1, max_tokens: 1` and sums the
echoed prompt's `token_logprobs`. So, as in vLLM's server:
- `echo` puts the prompt text (and, with `logprobs`, the prompt tokens' log-probabilities, None for
  the first) before the completion; `max_tokens: 0` with `echo` scores the prompt alone (the engine
  is asked for one token, which is dropped).
- A list of prompts is one request; each prompt runs as its own engine request, concurrently, and
  its `n` choices get indexes `prompt_index * n + choice`.
- No template and no first-space strip: the text is the model's raw continuation. Text prompts are
  tokenized with the checkpoint's tokenizer (BOS added unless `add_special_tokens: false`);
  generation stops on the checkpoint's EOS/EOT ids, `stop` strings and `max_tokens` (default 16).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any


from openchat_core.serving.engines.base import Delta, EngineError, SamplingOptions, TokenLogprob, shielded_abort
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
from openchat_core.serving.logprobs import TokenTexts, completion_logprobs
from openchat_core.serving.protocol import (
    DEFAULT_COMPLETION_TOKENS,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from openchat_core.serving.runtime import ModelRuntime

DEFAULT_TEMPERATURE = 1.0  # OpenAI's and vLLM's completions default
TOKENIZE_IN_THREAD_CHARS = 20_000


@dataclass
class Prompt:
    ids: list[int]
    text: str  # what `echo` returns: the prompt as sent, or its ids decoded
    logprobs: list[TokenLogprob | None] = field(default_factory=list)


@dataclass
class PreparedCompletion:
    request_id: str
    created: int
    runtime: ModelRuntime
    prompts: list[Prompt]
    options: SamplingOptions
    echo: bool
    score_only: bool  # max_tokens 0 with echo: the generated token is dropped
    logprobs: int | None
    include_usage: bool
    texts: TokenTexts

    def sub_id(self, p: int) -> str:
        return f"{self.request_id}-{p}"


class CompletionService(GenerationService):
    async def _prompts(self, body: CompletionRequest, runtime: ModelRuntime) -> list[Prompt]:
        tokenizer = runtime.tokenizer
        vocab = len(tokenizer)
        for index, prompt in enumerate(body.prompts):
            if not isinstance(prompt, str) and max(prompt) >= vocab:
                raise OpenAIError(400, f"prompt {index} has token id(s) outside the vocabulary (0..{vocab - 1})",
                                  param="prompt", code="invalid_request")

        def build() -> list[Prompt]:
            out = []
            for prompt in body.prompts:
                if isinstance(prompt, str):
                    ids = tokenizer(prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
                    out.append(Prompt(list(ids), prompt))
                else:
                    out.append(Prompt(prompt, tokenizer.decode(prompt) if body.echo else ""))
            return out

        size = sum(len(p) for p in body.prompts)
        return await asyncio.to_thread(build) if size > TOKENIZE_IN_THREAD_CHARS else build()

    def _max_tokens(self, body: CompletionRequest, prompts: list[Prompt], max_context: int) -> int:
        requested = DEFAULT_COMPLETION_TOKENS if body.max_tokens is None else body.max_tokens
        for index, prompt in enumerate(prompts):
            length = len(prompt.ids)
            if body.max_tokens is None:
                requested = max(1, min(requested, max_context - length))
            if length + max(requested, 1) > max_context:
                where = f"prompt {index}" if len(prompts) > 1 else "the prompt"
                note = "; scoring a prompt needs one free position" if requested == 0 else ""
                raise context_length_error(max_context, length, max(requested, 1), where, "prompt", note)
        return requested

    async def prepare(self, body: CompletionRequest, runtime: ModelRuntime) -> PreparedCompletion:
        structured = check_request(body, runtime)
        prompts = await self._prompts(body, runtime)
        if any(not p.ids for p in prompts):
            raise OpenAIError(400, "a prompt tokenized to no tokens; send text or add_special_tokens: true",
                              param="prompt", code="invalid_request")
        max_tokens = self._max_tokens(body, prompts, runtime.max_context)
        options = sampling_options(body, max_tokens=max(max_tokens, 1), stop_token_ids=runtime.stop_token_ids,
                                   default_temperature=DEFAULT_TEMPERATURE, logprobs=body.logprobs,
                                   prompt_logprobs=body.logprobs if body.echo else None, structured=structured,
                                   adapter=runtime.adapter_for(body.model))
        return PreparedCompletion(f"cmpl-{uuid.uuid4().hex}", int(time.time()), runtime, prompts, options, body.echo,
                                  max_tokens == 0, body.logprobs,
                                  bool(body.stream_options and body.stream_options.include_usage),
                                  TokenTexts(runtime.tokenizer))

    # ---- route ----------------------------------------------------------------------------------

    def begin(self, body: CompletionRequest, prep: PreparedCompletion, record: dict[str, Any]) -> Accounting:
        prompt_tokens = sum(len(p.ids) for p in prep.prompts)
        record.update({"echo": body.echo, "logprobs": body.logprobs, "request_id": prep.request_id,
                       "prompts": len(prep.prompts), "prompt_tokens": prompt_tokens, "params": params_for_log(prep.options)})
        if self.settings.log_prompts:
            record["prompt"] = body.prompt
        self.metrics.prompt_tokens.inc(prompt_tokens)
        return Accounting(prompt_tokens, [ChoiceState(strip_first_space=False)
                                          for _ in range(len(prep.prompts) * prep.options.n)])

    def respond(self, prep: PreparedCompletion, acct: Accounting) -> CompletionResponse:
        return CompletionResponse(id=prep.request_id, created=prep.created, model=prep.runtime.answering_name(prep.options.adapter),
                                  choices=[self._choice(prep, i, c) for i, c in enumerate(acct.choices)],
                                  usage=acct.usage(), system_fingerprint=prep.runtime.fingerprint)

    # ---- generation -----------------------------------------------------------------------------

    async def _deltas(self, prep: PreparedCompletion) -> AsyncIterator[Delta]:
        """Every prompt's engine stream, merged; delta indexes renumbered to prompt_index * n + choice."""
        n = prep.options.n
        engine = prep.runtime.engine

        async def one(p: int) -> AsyncIterator[Delta]:
            prompt = prep.prompts[p]
            async for delta in engine.generate(prep.sub_id(p), prompt.ids, prep.options):
                prompt.logprobs.extend(delta.prompt_logprobs)
                yield replace(delta, index=p * n + delta.index)

        if len(prep.prompts) == 1:
            async for delta in one(0):
                yield delta
            return
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

        async def pump(p: int) -> None:
            try:
                async for delta in one(p):
                    queue.put_nowait(delta)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who re-raises it
                queue.put_nowait(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                queue.put_nowait(None)

        tasks = [asyncio.ensure_future(pump(p)) for p in range(len(prep.prompts))]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(self, prep: PreparedCompletion, acct: Accounting) -> None:
        async for delta in self._deltas(prep):
            acct.add(delta)
        if not acct.finished:
            raise EngineError("the engine ended the request without finishing every choice")

    async def abort(self, prep: PreparedCompletion) -> None:
        for p in range(len(prep.prompts)):
            await shielded_abort(prep.runtime.engine, prep.sub_id(p))

    def account(self, prep: PreparedCompletion, acct: Accounting, record: dict[str, Any]) -> None:
        if prep.score_only:
            acct.completion_tokens = 0  # the engine's one token is dropped, not returned
        super().account(prep, acct, record)

    # ---- response shape -------------------------------------------------------------------------

    def _choice(self, prep: PreparedCompletion, index: int, state: ChoiceState) -> CompletionChoice:
        prompt = prep.prompts[index // prep.options.n]
        text = "" if prep.score_only else state.text
        token_ids = [] if prep.score_only else list(state.token_ids)
        entries: list[TokenLogprob | None] = [] if prep.score_only else list(state.logprobs)
        offset = 0
        if prep.echo:
            text = prompt.text + text
            token_ids = prompt.ids + token_ids
            entries = list(prompt.logprobs) + entries
        else:
            offset = len(prompt.text)
        logprobs = None
        if prep.logprobs is not None:
            logprobs = completion_logprobs(token_ids, entries, prep.texts, offset)
        reason = "length" if prep.score_only else (state.finish_reason or "stop")
        return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=reason)  # type: ignore[arg-type]

    async def stream(self, prep: PreparedCompletion, acct: Accounting) -> AsyncIterator[str]:
        runtime = prep.runtime
        base = {"id": prep.request_id, "object": "text_completion", "created": prep.created,
                "model": runtime.answering_name(prep.options.adapter), "system_fingerprint": runtime.fingerprint}
        echoed: set[int] = set()

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
            payload = {**base, "choices": choices}
            if prep.include_usage:
                payload["usage"] = usage.model_dump() if usage is not None else None
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async for delta in self._deltas(prep):
            before_text, before_ids = len(acct.choices[delta.index].text), len(acct.choices[delta.index].token_ids)
            acct.add(delta)
            state = acct.choices[delta.index]
            piece = ChoiceState(strip_first_space=False, text="" if prep.score_only else state.text[before_text:],
                                token_ids=[] if prep.score_only else state.token_ids[before_ids:],
                                logprobs=[] if prep.score_only else list(delta.logprobs))
            first = delta.index not in echoed
            echoed.add(delta.index)
            choice = self._choice(replace(prep, echo=prep.echo and first, score_only=False), delta.index, piece)
            finished = delta.finish_reason is not None
            choice.finish_reason = ("length" if prep.score_only else delta.finish_reason) if finished else None
            if choice.text or finished or (choice.logprobs is not None and choice.logprobs.tokens):
                yield chunk([choice.model_dump()])
        if not acct.finished:
            raise EngineError("the engine ended the request without finishing every choice")
        if prep.include_usage:
            if prep.score_only:
                acct.completion_tokens = 0
            yield chunk([], acct.usage())
