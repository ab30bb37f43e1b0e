"""OpenAI request/response models (chat completions, completions, logprobs, response formats), vLLM's
/tokenize and /detokenize, plus OpenChat's `condition` and the admin API.

Requests are parsed by FastAPI through these models, so a malformed body becomes a validation
error (400 in OpenAI's error shape), never a 500. Unknown request fields are accepted and ignored
(OpenAI clients send new fields all the time); fields we cannot honour (tools, logit_bias,
completions' suffix) are rejected with a 400 that says so, instead of being silently dropped.

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
MAX_LOGPROBS = 20  # vLLM's default max_logprobs; OpenAI allows 20 top_logprobs (chat) and 5 (completions)
MAX_PROMPTS = 64  # prompts in one /v1/completions request (lm-eval sends its batch as one request)
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's and vLLM's /v1/completions default


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(False, description="Send a last chunk with token usage (empty `choices`).")


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field("response", description="Name of the schema (informational).")
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON schema the output must satisfy.")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: text, any JSON object, or JSON matching a schema (vLLM engine)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('response_format {"type": "json_schema"} needs "json_schema": {"name": ..., "schema": {...}}')
        return self

    @property
    def constrained(self) -> bool:
        return self.type != "text"


class SamplingFields(BaseModel):
    """The request fields chat completions and completions share (defined once)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="Served name, model type, or one of its aliases (see GET /v1/models).")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass; default 1.")
    n: int | None = Field(None, ge=1, le=MAX_N, description="Number of choices; default 1.")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} stop strings.")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="Makes sampling reproducible.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool | None = Field(None, description="Server-sent events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # accepted so clients that always send it work; refused when set
    response_format: ResponseFormat | None = Field(
        None, description='{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema"}}; '
                          "JSON output is constrained decoding (vLLM engine only).")

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
    def _consistent(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.n_choices > 1 and getattr(self, "temperature", None) == 0:
            raise ValueError("n > 1 needs temperature > 0: greedy decoding would return n identical choices")
        return self

    @property
    def n_choices(self) -> int:
        return self.n or 1

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions. Defaults follow OpenChat's server where it has one (temperature 0.7)."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    condition: str = Field("", max_length=MAX_CONDITION_CHARS,
                           description='OpenChat C-RLFT condition, e.g. "GPT4 Correct" or "Math Correct"; '
                                       "empty: the model type's inference condition.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 0.7; 0 means greedy.")
    max_tokens: int | None = Field(None, ge=1, description="Completion token budget (legacy name).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Completion token budget; wins over max_tokens.")
    logprobs: bool | None = Field(None, description="Return the log-probability of every output token.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                     description="With logprobs: also the most likely tokens at each position.")
    # Accepted so clients that always send them work; rejected when they ask for something unsupported.
    tools: list[Any] | None = None
    tool_choice: Any = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def unsupported_feature(self) -> tuple[str, str] | None:
        """(param, message) for the first requested feature this server cannot honour, else None."""
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported by this server; remove it"
        if self.tools or (self.tool_choice not in (None, "none")):
            return "tools", "tool calling is not supported by OpenChat models; remove tools/tool_choice"
        return None


class CompletionRequest(SamplingFields):
    """POST /v1/completions: raw text (or token ids) in, continuation out; what lm-eval's `local-completions` sends.

    Defaults are OpenAI's: temperature 1, max_tokens 16. `echo` returns the prompt before the
    continuation (with `logprobs`, its tokens are scored too: log-likelihood evaluation);
    `max_tokens: 0` with `echo` only scores the prompt.
    """

    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="A string, a list of strings, token ids, or a list of token-id lists (one choice set each).")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 1; 0 means greedy.")
    max_tokens: int | None = Field(None, ge=0, description=f"Tokens to generate; default {DEFAULT_COMPLETION_TOKENS} "
                                                          "(0 only with echo).")
    echo: bool = Field(False, description="Return the prompt text (and its logprobs) before the completion.")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="Log-probabilities of each token plus this many most likely tokens.")
    add_special_tokens: bool = Field(True, description="Text prompts: add the tokenizer's BOS (vLLM's default).")
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, prompt: Any) -> Any:
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("prompt must not be an empty list")
            if len(prompt) > MAX_PROMPTS and not isinstance(prompt[0], int):
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}")
            if any(isinstance(p, list) and not p for p in prompt):
                raise ValueError("a token-id prompt must not be empty")
            if any(isinstance(t, int) and t < 0 for p in prompt for t in (p if isinstance(p, list) else [p])):
                raise ValueError("token ids must be >= 0")
        return prompt

    @model_validator(mode="after")
    def _zero_tokens_need_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 only makes sense with echo: true (scoring the prompt)")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]

    def unsupported_feature(self) -> tuple[str, str] | None:
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported by this server; remove it"
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported by OpenChat models; remove it"
        if self.best_of is not None and self.best_of != self.n_choices:
            return "best_of", "best_of is not supported; use n"
        return None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChatLogprobs | None = None


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
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions logprobs: parallel lists, None for the first prompt token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape): a text prompt, or chat messages rendered by the OpenChat template."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="Optional; checked against the served names when given.")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    condition: str = Field("", max_length=MAX_CONDITION_CHARS)
    add_special_tokens: bool = Field(True, description="Text prompts: add the tokenizer's BOS.")
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt (text) or messages (chat)")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[int] = Field(description="Token ids to turn back into text.")


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """GET /tokenizer_info (vLLM's, read by lm-eval's remote tokenizer)."""

    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    model_max_length: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "openchat-pipeline"
    root: str = Field(description="The served name this id resolves to (a LoRA adapter's own name).")
    parent: str | None = Field(None, description="For a LoRA adapter chosen by name: the served base it runs on.")
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
    engine_id: str = Field(description="Changes only when an engine (and so the base weights) is loaded anew.")
    base_model: str | None = Field(None, description="The base folder the engine holds, when LoRA adapters run on it.")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapter names clients can choose (--lora).")


class AdminLoadResponse(BaseModel):
    status: Literal["live"] = "live"
    model: LoadedModelInfo
    previous: LoadedModelInfo | None
    load_seconds: float
    smoke: SmokeResult
    reused_engine: bool = Field(False, description="True when the candidate is a LoRA adapter added to the running "
                                                   "engine: the base was not reloaded.")


class AdminStatusResponse(BaseModel):
    pid: int
    model: LoadedModelInfo | None
    draining: list[LoadedModelInfo]
    switching: bool
    engine_starts: int = Field(description="Engines this server has started (1 + full reloads).")
