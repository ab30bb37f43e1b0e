"""Engine log-probabilities (token ids and floats) in OpenAI's two shapes.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`. Completions (the
legacy shape lm-eval reads): parallel lists `tokens`, `token_logprobs`, `top_logprobs` (a dict
token text -> logprob per position) and `text_offset`, with None for the first prompt token when
the prompt is echoed. Token texts are each token decoded on its own, as vLLM does; -inf becomes
-9999.0, as in vLLM and OpenAI, because JSON has no infinity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openchat_core.serving.engines.base import TokenLogprob
from openchat_core.serving.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob

FLOOR = -9999.0


class TokenTexts:
    """Token id -> its text, decoded once per request (a tokenizer call per token is the slow part)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._tokenizer.decode([token_id])
        return text


def _value(logprob: float) -> float:
    return max(logprob, FLOOR)


def chat_logprobs(entries: Sequence[TokenLogprob], texts: TokenTexts) -> ChatLogprobs:
    def top(token_id: int, logprob: float) -> TopLogprob:
        text = texts(token_id)
        return TopLogprob(token=text, logprob=_value(logprob), bytes=list(text.encode("utf-8")))

    content = []
    for entry in entries:
        own = top(entry.token_id, entry.logprob)
        content.append(ChatTokenLogprob(**own.model_dump(), top_logprobs=[top(t, lp) for t, lp in entry.top]))
    return ChatLogprobs(content=content)


def completion_logprobs(token_ids: Sequence[int], entries: Sequence[TokenLogprob | None], texts: TokenTexts,
                        text_offset: int = 0) -> CompletionLogprobs:
    """`entries[i]` scores `token_ids[i]` (None: unscored, the first prompt token)."""
    out = CompletionLogprobs()
    offset = text_offset
    for token_id, entry in zip(token_ids, entries):
        text = texts(token_id)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(_value(entry.logprob))
        top = {texts(t): _value(lp) for t, lp in entry.top}
        top.setdefault(text, _value(entry.logprob))  # OpenAI/vLLM: the chosen token is always listed
        out.top_logprobs.append(top)
    return out
