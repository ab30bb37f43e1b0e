"""Turning generated token ids into text deltas: incremental detokenization and stop strings.

Used by the engines that do not get text from vLLM (the transformers engine, the test fake), so
their output matches vLLM's:

- Decoding is incremental in the context of the last prompt tokens (vLLM keeps 5), so the first
  generated SentencePiece token "▁Hi" comes out as " Hi", as vLLM's detokenizer gives it, and the
  app strips that first space the way OpenChat's server does.
- Text ending in U+FFFD (an incomplete byte-fallback sequence) is held back until complete.
- Stop strings end the choice with finish_reason "stop"; the stop string and anything after it
  are not returned, and while streaming the last `len(longest stop) - 1` characters are held back
  so a partial stop string is never emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

PROMPT_CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, prompt_ids: Sequence[int]) -> None:
        self._tok = tokenizer
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the newly completed text (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        new_text = self._tok.decode(self._ids[self._prefix_offset:], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character), at the end of the choice."""
        prefix_text = self._tok.decode(self._ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        new_text = self._tok.decode(self._ids[self._prefix_offset:], skip_special_tokens=True)
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""


class StopStringMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._text = ""
        self._emitted = 0

    def feed(self, new_text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string ended the choice)."""
        search_from = max(self._emitted, len(self._text) - self._hold)
        self._text += new_text
        hits = [i for i in (self._text.find(s, search_from) for s in self._stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self._text[self._emitted:end]
            self._emitted = len(self._text)
            return out, True
        safe_end = len(self._text) - self._hold
        if safe_end > self._emitted:
            out = self._text[self._emitted:safe_end]
            self._emitted = safe_end
            return out, False
        return "", False

    def flush(self) -> str:
        out = self._text[self._emitted:]
        self._emitted = len(self._text)
        return out


class ChoiceText:
    """Detokenizer + stop strings for one choice."""

    def __init__(self, tokenizer: Decoder, prompt_ids: Sequence[int], stops: Sequence[str]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stops = StopStringMatcher(stops)

    def push(self, token_id: int) -> tuple[str, bool]:
        return self._stops.feed(self._detok.push(token_id))

    def finish(self) -> str:
        """Text still held back when the choice ends for another reason (stop token, length)."""
        out, stopped = self._stops.feed(self._detok.flush())
        return out if stopped else out + self._stops.flush()
