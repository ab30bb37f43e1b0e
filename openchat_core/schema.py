"""The Conversation data model: OpenChat's JSONL format, as plain pydantic, plus what today's chat data carries.

This module must stay light (pydantic only) so that `from openchat_core.schema import Conversation`
works where torch, transformers or vLLM are absent: validation, data tooling and the serving
protocol all share it.

Beyond OpenChat's `items`/`condition`/`system`, a conversation may carry tool definitions and calls
(OpenAI's shape: assistant `tool_calls`, a `tool` turn answering a `tool_call_id`, a top-level `tools`
list) and an assistant's reasoning. These are kept as data so the model's own chat template can render
them; model types without a tool format refuse such records instead of dropping the fields. Tool call
`arguments` stay JSON text, as OpenAI sends them; renderers parse them where a template wants a mapping.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("user", "assistant", "tool")
OPENCHAT_ROLES: tuple[str, ...] = ("user", "assistant")  # the roles OpenChat's own format and templates know


class ToolFunction(BaseModel):
    """The function a tool call invokes: its name and its arguments as JSON text."""

    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """One call in an assistant turn (OpenAI's `tool_calls[i]`)."""

    model_config = ConfigDict(extra="ignore")

    id: str = ""
    type: Literal["function"] = "function"
    function: ToolFunction


class Message(BaseModel):
    """One turn. `weight` is the loss weight of the turn's tokens (None before C-RLFT assignment).

    `tool_calls` and `reasoning` belong to assistant turns; `tool_call_id` (and the function `name`) to
    `tool` turns, whose content is a tool's result and is never supervised.
    """

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str
    weight: float | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None


class Conversation(BaseModel):
    """One training conversation: its turns, its C-RLFT condition (data-source class) and system prompt.

    `tools` holds the tool definitions offered to the model (OpenAI's `tools` list of
    `{"type": "function", "function": {...}}` objects); `pair_id` links the two halves of a preference
    pair (chosen and rejected) so mixing and the train/eval split keep them together.
    """

    model_config = ConfigDict(extra="ignore")

    items: list[Message] = Field(min_length=1)
    condition: str = ""
    system: str = ""
    tools: list[dict[str, Any]] | None = None
    pair_id: str = ""
