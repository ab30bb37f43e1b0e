"""Other chat formats, mapped onto OpenChat's Conversation and checked by the same rules.

Users arrive with OpenAI `messages`, ShareGPT `conversations` (`from`/`value`) or Alpaca
(`instruction`/`input`/`output`) records. Each converter only maps fields and rejects what has no
place in a Conversation (a `tool` role, a system message in the middle, an image part); the
result then goes through `rules.check_record`, the one validator, and a rejection's field is
translated back to the field of the original record (`items[1].content` -> `conversations[2].value`),
so every error names what the user wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from openchat_core.data.rules import ErrorCode, Rejection, ValidRecord, _check_string, _type_name, check_record

FormatName = Literal["openchat", "messages", "sharegpt", "alpaca"]
FORMATS: tuple[FormatName, ...] = ("openchat", "messages", "sharegpt", "alpaca")
FORMAT_CHOICES = ("auto", *FORMATS)

MESSAGES_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
ALPACA_INPUT_SEPARATOR = "\n\n"  # instruction, blank line, input: the layout of Alpaca's own prompt
CONTENT_PART_SEPARATOR = "\n"  # text parts of one message are joined with a newline, as vLLM's chat template code does

# The key that tells each format apart, in the order auto-detection tries them.
SIGNATURES: tuple[tuple[FormatName, tuple[str, ...]], ...] = (
    ("openchat", ("items",)),
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
)


class FormatDetectionError(ValueError):
    """`--format auto` could not tell a file's format from its first records."""


@dataclass(frozen=True)
class _Mapped:
    """A record mapped to Conversation fields, with where each message and `system` came from."""

    record: dict[str, Any]
    origins: list[tuple[str, str]]  # per item: (message path, content field name)
    system_origin: str = "system"
    items_origin: str = "items"


def detect_format(record: Any) -> FormatName | None:
    """The format a record's keys announce, or None (not an object, or no known key)."""
    if isinstance(record, dict):
        for name, keys in SIGNATURES:
            if all(k in record for k in keys):
                return name
    return None


def detect_from_keys(keys: Iterable[str]) -> FormatName | None:
    """The format a set of column names announces (for Parquet and `datasets` inputs)."""
    return detect_format(dict.fromkeys(keys))


def choose_format(records: Iterable[Any], where: str) -> FormatName:
    """The most common format among sample records (ties: the first seen); fails closed when none is known."""
    counts: dict[FormatName, int] = {}
    seen = 0
    for record in records:
        seen += 1
        name = detect_format(record)
        if name:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        raise FormatDetectionError(
            f"{where}: cannot tell the format from its first {seen} records: none has 'items' (openchat), 'messages', "
            f"'conversations' (sharegpt) or 'instruction'+'output' (alpaca). Pass --format (or `format:` in the data source).")
    return max(counts, key=lambda n: counts[n])  # max keeps the first of equal counts


def _join_content(content: Any, field: str) -> Any:
    """A message's text: a string as is, a list of text parts joined; other types are left for `check_record`."""
    if not isinstance(content, list):
        return content
    texts = []
    for i, part in enumerate(content):
        where = f"{field}[{i}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else _type_name(part)
            return Rejection(ErrorCode.INVALID_CONTENT_PART, where,
                             f"field '{where}' must be a {{\"type\": \"text\", \"text\": ...}} part, got {kind!r:.40}; only text is supported")
        if "text" not in part:
            return Rejection(ErrorCode.MISSING_FIELD, f"{where}.text", f"field '{where}.text' is required")
        problem = _check_string(part["text"], f"{where}.text")
        if problem:
            return problem
        texts.append(part["text"])
    return CONTENT_PART_SEPARATOR.join(texts)


def _map_turns(obj: dict[str, Any], list_key: str, role_key: str, content_key: str, roles: dict[str, str]) -> _Mapped | Rejection:
    """Shared by `messages` and ShareGPT: a list of role/content objects, an optional leading system message."""
    if list_key not in obj:
        return Rejection(ErrorCode.MISSING_FIELD, list_key, f"field '{list_key}' is required (a list of {{{role_key}, {content_key}}} messages)")
    turns = obj[list_key]
    if not isinstance(turns, list):
        return Rejection(ErrorCode.INVALID_TYPE, list_key, f"field '{list_key}' must be an array, got {_type_name(turns)}")
    record: dict[str, Any] = {k: obj[k] for k in ("condition", "system") if k in obj}
    items: list[dict[str, Any]] = []
    origins: list[tuple[str, str]] = []
    system_origin = "system"
    for i, turn in enumerate(turns):
        base = f"{list_key}[{i}]"
        if not isinstance(turn, dict):
            return Rejection(ErrorCode.INVALID_TYPE, base, f"field '{base}' must be an object, got {_type_name(turn)}")
        for key in (role_key, content_key):
            if key not in turn:
                return Rejection(ErrorCode.MISSING_FIELD, f"{base}.{key}", f"field '{base}.{key}' is required")
        role = turn[role_key]
        if not isinstance(role, str):
            return Rejection(ErrorCode.INVALID_TYPE, f"{base}.{role_key}", f"field '{base}.{role_key}' must be a string, got {_type_name(role)}")
        if role not in roles:
            return Rejection(ErrorCode.UNSUPPORTED_ROLE, f"{base}.{role_key}",
                             f"field '{base}.{role_key}' is {role!r:.40}; supported: {', '.join(roles)} (tool and function turns have no place in an OpenChat conversation)")
        content = _join_content(turn[content_key], f"{base}.{content_key}")
        if isinstance(content, Rejection):
            return content
        if roles[role] == "system":
            if i != 0:
                return Rejection(ErrorCode.MISPLACED_SYSTEM, f"{base}.{role_key}",
                                 f"a system message is only supported as the first message; {base} is one")
            record["system"], system_origin = content, f"{base}.{content_key}"
            continue
        item = {"role": roles[role], "content": content}
        if "weight" in turn:
            item["weight"] = turn["weight"]
        items.append(item)
        origins.append((base, content_key))
    if not items:
        return Rejection(ErrorCode.EMPTY_ITEMS, list_key, f"field '{list_key}' must hold at least one user or assistant message")
    record["items"] = items
    return _Mapped(record, origins, system_origin, list_key)


def _map_messages(obj: dict[str, Any]) -> _Mapped | Rejection:
    return _map_turns(obj, "messages", "role", "content", MESSAGES_ROLES)


def _map_sharegpt(obj: dict[str, Any]) -> _Mapped | Rejection:
    return _map_turns(obj, "conversations", "from", "value", SHAREGPT_ROLES)


def _map_alpaca(obj: dict[str, Any]) -> _Mapped | Rejection:
    for key in ("instruction", "output"):
        if key not in obj:
            return Rejection(ErrorCode.MISSING_FIELD, key, f"field '{key}' is required (Alpaca: instruction, optional input, output)")
    for key in ("instruction", "input", "output"):
        if obj.get(key) is not None:
            problem = _check_string(obj[key], key)
            if problem:
                return problem
    user = obj["instruction"]
    if obj.get("input"):
        user = f"{user}{ALPACA_INPUT_SEPARATOR}{obj['input']}"
    record = {k: obj[k] for k in ("condition", "system") if k in obj}
    record["items"] = [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
    return _Mapped(record, [("instruction", ""), ("output", "")])


def _remap(rejection: Rejection, mapped: _Mapped) -> Rejection:
    """Translate a field of the mapped record (`items[1].content`) to the original record's field."""
    field = rejection.field
    if field == "system":
        new = mapped.system_origin
    elif field == "items":
        new = mapped.items_origin
    elif field and field.startswith("items[") and "]" in field:
        index = int(field[len("items["):field.index("]")])
        rest = field[field.index("]") + 1:]
        base, content_key = mapped.origins[index]
        if rest.startswith(".content"):  # Alpaca's turns are whole fields: `instruction`, `output`
            rest = f".{content_key}{rest[len('.content'):]}" if content_key else rest[len(".content"):]
        new = base + rest
    else:
        return rejection
    return replace(rejection, field=new, message=rejection.message.replace(f"'{field}'", f"'{new}'"))


MAPPERS: dict[str, tuple[Callable[[dict[str, Any]], _Mapped | Rejection], frozenset[str]]] = {
    "messages": (_map_messages, frozenset({"messages", "condition", "system"})),
    "sharegpt": (_map_sharegpt, frozenset({"conversations", "condition", "system"})),
    "alpaca": (_map_alpaca, frozenset({"instruction", "input", "output", "condition", "system"})),
}


def record_checker(fmt: FormatName, default_condition: str | None = None) -> Callable[[Any], ValidRecord | Rejection]:
    """A function that maps one parsed record of `fmt` and checks it with the Conversation rules.

    `default_condition` fills `condition` when the record has none (a record's own condition is kept).
    """
    if fmt == "openchat":
        if default_condition is None:
            return check_record

        def check_openchat(obj: Any) -> ValidRecord | Rejection:
            if isinstance(obj, dict) and "condition" not in obj:
                obj = {**obj, "condition": default_condition}
            return check_record(obj)

        return check_openchat
    mapper, known = MAPPERS[fmt]

    def check(obj: Any) -> ValidRecord | Rejection:
        if not isinstance(obj, dict):
            return check_record(obj)
        mapped = mapper(obj)
        if isinstance(mapped, Rejection):
            return mapped
        record = mapped.record
        if default_condition is not None and "condition" not in record:
            record["condition"] = default_condition
        checked = check_record(record)
        if isinstance(checked, Rejection):
            return _remap(checked, mapped)
        return replace(checked, unknown_keys=tuple(k for k in obj if k not in known))

    return check
