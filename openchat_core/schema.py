"""The Conversation data model: OpenChat's JSONL format, as plain pydantic.

This module must stay light (pydantic only) so that `from openchat_core.schema import Conversation`
works where torch, transformers or vLLM are absent: validation, data tooling and the serving
protocol all share it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["user", "assistant"]
ROLES: tuple[str, ...] = ("user", "assistant")


class Message(BaseModel):
    """One turn. `weight` is the loss weight of the turn's tokens (None before C-RLFT assignment)."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str
    weight: float | None = None


class Conversation(BaseModel):
    """One training conversation: its turns, its C-RLFT condition (data-source class) and system prompt."""

    model_config = ConfigDict(extra="ignore")

    items: list[Message] = Field(min_length=1)
    condition: str = ""
    system: str = ""
