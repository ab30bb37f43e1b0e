"""The validation rules for one Conversation record, with stable error codes.

Kept apart from the streaming machinery (`validate.py`) so the rules read as a specification:
each check names the field it looks at, and every failure carries a code that scripts and
dashboards can rely on across releases (codes are never renamed, only added).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from openchat_core.schema import OPENCHAT_ROLES as ROLES

DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer line is rejected (line_too_long) without being loaded

KNOWN_TOP_LEVEL_KEYS = frozenset({"items", "condition", "system"})
KNOWN_MESSAGE_KEYS = frozenset({"role", "content", "weight"})


class ErrorCode(StrEnum):
    """Why a line was rejected. Values are stable identifiers written to quarantine.jsonl."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    EMPTY_ITEMS = "empty_items"
    INVALID_ROLE = "invalid_role"
    INVALID_WEIGHT = "invalid_weight"
    NON_FINITE_NUMBER = "non_finite_number"
    LONE_SURROGATE = "lone_surrogate"
    NO_ASSISTANT_MESSAGE = "no_assistant_message"
    LINE_TOO_LONG = "line_too_long"
    # Added for the other input formats (formats.py).
    UNSUPPORTED_ROLE = "unsupported_role"
    MISPLACED_SYSTEM = "misplaced_system"
    INVALID_CONTENT_PART = "invalid_content_part"


@dataclass(frozen=True)
class Rejection:
    """A rule violation: the stable code, the offending field path (or None) and a readable message."""

    code: ErrorCode
    field: str | None
    message: str


@dataclass(frozen=True)
class ValidRecord:
    """A record that passed every rule, normalised to the Conversation fields."""

    items: list[dict[str, Any]]
    condition: str
    system: str
    unknown_keys: tuple[str, ...]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value), type(value).__name__)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_string(value: Any, field: str) -> Rejection | None:
    if not isinstance(value, str):
        return Rejection(ErrorCode.INVALID_TYPE, field, f"field '{field}' must be a string, got {_type_name(value)}")
    if _has_lone_surrogate(value):
        return Rejection(ErrorCode.LONE_SURROGATE, field, f"field '{field}' holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode")
    return None


def _check_weight(value: Any, field: str) -> Rejection | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Rejection(ErrorCode.INVALID_TYPE, field, f"field '{field}' must be a number or null, got {_type_name(value)} {value!r:.40}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a double
        finite = False
    if not finite:
        return Rejection(ErrorCode.NON_FINITE_NUMBER, field, f"field '{field}' must be finite, got {value!r:.40}")
    if value < 0:
        return Rejection(ErrorCode.INVALID_WEIGHT, field, f"field '{field}' must be >= 0, got {value}")
    return None


def check_record(obj: Any) -> ValidRecord | Rejection:
    """Apply every rule to one parsed JSON value; return the normalised record or the first violation."""
    if not isinstance(obj, dict):
        return Rejection(ErrorCode.NOT_AN_OBJECT, None, f"a line must hold a JSON object, got {_type_name(obj)}")
    if "items" not in obj:
        return Rejection(ErrorCode.MISSING_FIELD, "items", "field 'items' is required (a list of {role, content, weight} messages)")
    items = obj["items"]
    if not isinstance(items, list):
        return Rejection(ErrorCode.INVALID_TYPE, "items", f"field 'items' must be an array, got {_type_name(items)}")
    if not items:
        return Rejection(ErrorCode.EMPTY_ITEMS, "items", "field 'items' must hold at least one message")

    unknown = [k for k in obj if k not in KNOWN_TOP_LEVEL_KEYS]
    out_items: list[dict[str, Any]] = []
    has_assistant = False
    for i, msg in enumerate(items):
        base = f"items[{i}]"
        if not isinstance(msg, dict):
            return Rejection(ErrorCode.INVALID_TYPE, base, f"field '{base}' must be an object, got {_type_name(msg)}")
        for key in ("role", "content"):
            if key not in msg:
                return Rejection(ErrorCode.MISSING_FIELD, f"{base}.{key}", f"field '{base}.{key}' is required")
        role = msg["role"]
        if not isinstance(role, str):
            return Rejection(ErrorCode.INVALID_TYPE, f"{base}.role", f"field '{base}.role' must be a string, got {_type_name(role)}")
        if role not in ROLES:
            return Rejection(ErrorCode.INVALID_ROLE, f"{base}.role", f"field '{base}.role' must be 'user' or 'assistant', got {role!r:.40}")
        problem = _check_string(msg["content"], f"{base}.content") or _check_weight(msg.get("weight"), f"{base}.weight")
        if problem:
            return problem
        unknown.extend(f"{base}.{k}" for k in msg if k not in KNOWN_MESSAGE_KEYS)
        weight = msg.get("weight")
        out_items.append({"role": role, "content": msg["content"], "weight": None if weight is None else float(weight)})
        has_assistant = has_assistant or role == "assistant"

    for key in ("condition", "system"):
        if key in obj:
            problem = _check_string(obj[key], key)
            if problem:
                return problem
    if not has_assistant:
        return Rejection(ErrorCode.NO_ASSISTANT_MESSAGE, "items", "a conversation needs at least one 'assistant' message to learn from")
    return ValidRecord(out_items, obj.get("condition", ""), obj.get("system", ""), tuple(unknown))


class _FastMessage(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    role: Literal["user", "assistant"]
    content: str
    weight: float | None = Field(None, ge=0)


class _FastConversation(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    items: list[_FastMessage] = Field(min_length=1)
    condition: str = ""
    system: str = ""


class FastPath:
    """Parse and check a line entirely in pydantic-core (Rust), for the common valid case.

    It accepts a subset of what `check_record` accepts (strict types, finite weights >= 0, no lone
    surrogates: the JSON parser refuses them); anything it refuses goes through `parse_line` for an
    exact code and field. A property test keeps the two in agreement.
    """

    def __init__(self) -> None:
        self._adapter = TypeAdapter(_FastConversation)

    def parse(self, raw: bytes) -> _FastConversation | None:
        try:
            conv = self._adapter.validate_json(raw)
        except ValidationError:
            return None
        for msg in conv.items:
            if msg.role == "assistant":
                return conv
        return None

    @staticmethod
    def unknown_keys(conv: _FastConversation) -> list[str]:
        keys = list(conv.__pydantic_extra__ or ())
        for i, msg in enumerate(conv.items):
            if msg.__pydantic_extra__:
                keys.extend(f"items[{i}].{k}" for k in msg.__pydantic_extra__)
        return keys


class _NonFinite(Exception):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _reject_constant(token: str) -> float:
    raise _NonFinite(token)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def parse_line(raw: bytes, check: Callable[[Any], ValidRecord | Rejection] = check_record) -> ValidRecord | Rejection:
    """Parse and check one non-blank line of bytes (`check` converts and checks the parsed value).

    The fast path is orjson. When it refuses a line, the stdlib parser (which accepts lone
    surrogates, NaN and overflowing numbers) re-reads it so that the rejection can name the
    exact problem and field instead of a generic parse error.
    """
    try:
        return check(orjson.loads(raw))
    except orjson.JSONDecodeError as fast_error:
        return _diagnose(raw, str(fast_error), check)


def _diagnose(raw: bytes, fast_error: str, check: Callable[[Any], ValidRecord | Rejection]) -> ValidRecord | Rejection:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(ErrorCode.INVALID_UTF8, None, f"bytes are not valid UTF-8 at byte offset {e.start} ({raw[e.start:e.start + 4]!r})")
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except _NonFinite as e:
        return Rejection(ErrorCode.NON_FINITE_NUMBER, _locate_token(text, e.token), f"JSON numbers must be finite; found {e.token}")
    except json.JSONDecodeError as e:
        return Rejection(ErrorCode.INVALID_JSON, None, f"invalid JSON at column {e.colno}: {e.msg}")
    result = check(obj)
    if isinstance(result, ValidRecord):  # stdlib accepted what orjson refused: report orjson's reason
        return Rejection(ErrorCode.INVALID_JSON, None, f"invalid JSON: {fast_error}")
    return result


def _locate_token(text: str, token: str) -> str | None:
    """Best-effort field path for a non-finite token: parse with the token replaced by a marker."""
    marker = 1.2345e-300
    try:
        obj = json.loads(text, parse_constant=lambda _: marker, parse_float=lambda s: marker if not math.isfinite(float(s)) else float(s))
    except json.JSONDecodeError:
        return None
    return _find_value(obj, marker, "")


def _find_value(obj: Any, needle: float, path: str) -> str | None:
    if isinstance(obj, float) and obj == needle:
        return path or None
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _find_value(v, needle, f"{path}.{k}" if path else k)
            if found:
                return found
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            found = _find_value(v, needle, f"{path}[{i}]")
            if found:
                return found
    return None
