"""OpenAI chat-completions request/response models, plus OpenChat's `condition` and the admin API.

Requests are parsed by FastAPI through these models, so a malformed body becomes a validation
error (400 in OpenAI's error shape), never a 500. Unknown request fields are accepted and ignored
(OpenAI clients send new fields all the time); fields we cannot honour (tools, logprobs,
logit_bias, non-text response formats) are rejected with a 400 that says so, instead of being
silently dropped.

Light module: pydantic only, so the API schema is importable and testable without torch or vLLM.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ALLOWED_ROLES = ("system", "user", "assistant")
MAX_N = 16
MAX_STOP_SEQUENCES = 4
MAX_CONDITION_CHARS = 256
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1


class TextContentPart(BaseModel):
    """One part of an array-form message content; only text parts are supported."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description='Only "text" is supported.', json_schema_extra={"enum": ["text"]})
    text: str = ""

    @model_validator(mode="after")
    def _only_text(self) -> TextContentPart:
        if self.type != "text":
            raise ValueError(f"content part type {self.type!r} is not supported; send text parts only "
                             f'({{"type": "text", "text": ...}}) or a plain string')
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(description="system, user or assistant.", json_schema_extra={"enum": list(ALLOWED_ROLES)})
    content: str | list[TextContentPart] | None = Field(
        description="Message text (a string or a list of text parts). May be null for an assistant message.")
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ALLOWED_ROLES:
            raise ValueError(f"role {role!r} is not supported; use one of {', '.join(ALLOWED_ROLES)} "
                             f"(tool and function messages are not supported by OpenChat models)")
        return role

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs `content` (a string)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(False, description="Send a last chunk with token usage (empty `choices`).")


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Defaults follow OpenChat's server where it has one (temperature 0.7)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="Served name, model type, or one of its aliases (see GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    condition: str = Field("", max_length=MAX_CONDITION_CHARS,
                           description='OpenChat C-RLFT condition, e.g. "GPT4 Correct" or "Math Correct"; '
                                       "empty: the model type's inference condition.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 0.7; 0 means greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass; default 1.")
    n: int | None = Field(None, ge=1, le=MAX_N, description="Number of choices; default 1.")
    max_tokens: int | None = Field(None, ge=1, description="Completion token budget (legacy name).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Completion token budget; wins over max_tokens.")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} stop strings.")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="Makes sampling reproducible.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool | None = Field(None, description="Server-sent events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted so clients that always send them work; rejected when they ask for something unsupported.
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> str | list[str] | None:
        items = [stop] if isinstance(stop, str) else (stop or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(items)}")
        if any(s == "" for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return stop

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.n_choices > 1 and self.temperature == 0:
            raise ValueError("n > 1 needs temperature > 0: greedy decoding would return n identical choices")
        return self

    @property
    def n_choices(self) -> int:
        return self.n or 1

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def unsupported_feature(self) -> tuple[str, str] | None:
        """(param, message) for the first requested feature this server cannot honour, else None."""
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported by this server; remove it"
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not supported by this server; remove logprobs/top_logprobs"
        if self.tools or (self.tool_choice not in (None, "none")):
            return "tools", "tool calling is not supported by OpenChat models; remove tools/tool_choice"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only response_format {\"type\": \"text\"} is supported"
        return None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = Field(None, description="Served name and registry version that produced it.")


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class StreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "openchat-pipeline"
    root: str = Field(description="The served name this id resolves to.")
    model_type: str
    registry_version: str | None = None
    max_context: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    registry_version: str | None = None


class AdminLoadRequest(BaseModel):
    """POST /admin/load: load a checkpoint beside the live one, smoke-test it, then make it live."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Checkpoint folder on the server's machine.")
    served_name: str | None = Field(None, min_length=1, description="Default: keep the current served name.")
    registry_version: str | None = Field(None, description="Registry version of the candidate.")
    model_type: str | None = Field(None, description="Default: read from the checkpoint's openchat.json.")


class SmokeResult(BaseModel):
    tokens: int
    finish_reason: str
    seconds: float
    text: str


class LoadedModelInfo(BaseModel):
    served_name: str
    model_type: str
    registry_version: str | None
    model_dir: str
    engine: str
    max_context: int


class AdminLoadResponse(BaseModel):
    status: Literal["live"] = "live"
    model: LoadedModelInfo
    previous: LoadedModelInfo | None
    load_seconds: float
    smoke: SmokeResult


class AdminStatusResponse(BaseModel):
    pid: int
    model: LoadedModelInfo | None
    draining: list[LoadedModelInfo]
    switching: bool
