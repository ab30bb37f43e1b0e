"""Streaming validation of conversation files (`openchat validate`).

Every input record (a JSONL line, a JSON array element, a Parquet or `datasets` row) ends in
exactly one of three places: the validated Parquet, the quarantine (with a stable code and a
message naming file, record and field), or the blank count. The invariant
lines = valid + rejected + blank is checked before the report is written (`lines` counts records;
`line` is the record's 1-based number in its file). OpenChat-format JSONL takes a fast path
(pydantic-core); other formats are mapped by `formats.py` and checked by the same rules.
Memory is bounded by the output batch size and the longest accepted line, never the file size
(a `.json` array is the exception: it is one JSON document, parsed whole).
"""

from __future__ import annotations

import base64
import gc
import gzip
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from openchat_core.data.conversations_io import ConversationWriter
from openchat_core.data.formats import FORMAT_CHOICES, FormatDetectionError, FormatName, choose_format, detect_from_keys, record_checker
from openchat_core.data.rules import DEFAULT_MAX_LINE_BYTES, ErrorCode, FastPath, Rejection, ValidRecord, parse_line
from openchat_core.data.sources import InputKind, column_names, input_kind, iter_records, record_bytes, sample_records

UTF8_BOM = b"\xef\xbb\xbf"
RAW_PREVIEW_BYTES = 64 * 1024
_READ_CHUNK = 1024 * 1024


class RejectedFractionExceeded(RuntimeError):
    """The share of rejected lines is above the configured maximum; outputs are still written."""


@dataclass
class SourceCounts:
    lines: int = 0
    valid: int = 0
    rejected: int = 0
    blank: int = 0
    format: str = "openchat"
    detected: bool = False  # the format was chosen by `auto`


@dataclass(frozen=True)
class InputSource:
    """One input path with its format (`auto` detects it) and the condition given to records without one."""

    path: Path
    format: str = "openchat"
    condition: str | None = None


@dataclass
class ValidationReport:
    """Counts for report.json. `lines == valid + rejected + blank` always holds."""

    lines: int = 0
    valid: int = 0
    rejected: int = 0
    blank: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    unknown_keys: dict[str, int] = field(default_factory=dict)
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    max_rejected_fraction: float | None = None

    @property
    def rejected_fraction(self) -> float:
        return self.rejected / max(1, self.valid + self.rejected)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected_fraction"] = self.rejected_fraction
        return data


class RawLine(NamedTuple):
    """One physical line: its 1-based number, its bytes (without line end), and whether it was cut."""

    number: int
    data: bytes
    truncated: bool = False
    length: int = 0


def open_input(path: Path) -> IO[bytes]:
    """Open a `.jsonl` or `.jsonl.gz` file as a binary stream (gzip detected by magic bytes)."""
    handle = open(path, "rb")
    if handle.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle


def _strip_line_end(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\r") else data


def iter_raw_lines(stream: IO[bytes], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, block_size: int = _READ_CHUNK) -> Iterator[RawLine]:
    """Yield the lines of a byte stream with CRLF/LF stripped and a leading UTF-8 BOM removed.

    Reads in blocks and splits them (much cheaper per line than `readline`). A line longer than
    `max_line_bytes` is yielded truncated to a preview, and the rest of it is skipped, so one huge
    line cannot exhaust memory.
    """
    preview = min(RAW_PREVIEW_BYTES, max_line_bytes)
    number = 0
    head = stream.read(len(UTF8_BOM))  # the file's opening bytes; dropped when they are a BOM
    if head == UTF8_BOM:
        head = b""
    carry = b""
    skipping = 0  # > 0 while discarding the rest of an over-long line: bytes seen so far
    while True:
        block = stream.read(block_size)
        if head:
            block, head = head + block, b""
        if not block:
            break
        if skipping:
            cut = block.find(b"\n")
            if cut < 0:
                skipping += len(block)
                continue
            number += 1
            yield RawLine(number, carry, True, skipping + cut + 1)
            carry, skipping, block = b"", 0, block[cut + 1:]
        parts = (carry + block).split(b"\n") if carry else block.split(b"\n")
        carry = parts.pop()
        for data in parts:
            number += 1
            if len(data) > max_line_bytes:
                yield RawLine(number, data[:preview], True, len(data) + 1)
            else:
                yield RawLine(number, data[:-1] if data.endswith(b"\r") else data)
        if len(carry) > max_line_bytes:  # no line end in sight: keep a preview, drop the rest as it streams
            skipping, carry = len(carry), carry[:preview]
    if skipping:
        yield RawLine(number + 1, carry, True, skipping)
    elif carry:
        yield RawLine(number + 1, _strip_line_end(carry))


def _quarantine_entry(source: str, line: RawLine, rejection: Rejection) -> dict[str, Any]:
    where = f"{source}:{line.number}"
    field_part = f" [field {rejection.field}]" if rejection.field else ""
    entry: dict[str, Any] = {
        "source": source,
        "line": line.number,
        "code": str(rejection.code),
        "field": rejection.field,
        "message": f"{where}{field_part}: {rejection.message}",
    }
    try:
        entry["raw"] = line.data.decode("utf-8")
    except UnicodeDecodeError:
        # Not representable as a JSON string: keep a readable form and the exact bytes.
        entry["raw"] = line.data.decode("utf-8", errors="replace")
        entry["raw_base64"] = base64.b64encode(line.data).decode("ascii")
    if line.truncated:
        entry["raw_truncated_from_bytes"] = line.length
    return entry


class _Sink:
    """Where records end: the writer, the quarantine, and the counts of one source."""

    def __init__(self, writer: ConversationWriter, quarantine: IO[str], by_code: Counter[str], unknown: Counter[str]) -> None:
        self.writer, self.quarantine, self.by_code, self.unknown = writer, quarantine, by_code, unknown

    def reject(self, counts: SourceCounts, source: str, line: RawLine, rejection: Rejection) -> None:
        counts.rejected += 1
        self.by_code[str(rejection.code)] += 1
        self.quarantine.write(json.dumps(_quarantine_entry(source, line, rejection), ensure_ascii=False) + "\n")

    def accept(self, counts: SourceCounts, source: str, number: int, result: ValidRecord) -> None:
        counts.valid += 1
        self.unknown.update(result.unknown_keys)
        self.writer.write(source, number, result.condition, result.system, result.items)


def _too_long(line: RawLine, max_line_bytes: int) -> Rejection:
    return Rejection(ErrorCode.LINE_TOO_LONG, None, f"line is {line.length} bytes, over the limit of {max_line_bytes} bytes")


def _openchat_lines(stream: IO[bytes], source: str, counts: SourceCounts, sink: _Sink, fast: FastPath, max_line_bytes: int,
                    default_condition: str | None) -> None:
    """OpenChat-format JSONL: the pydantic-core fast path for valid lines, the exact rules for the rest."""
    writer, unknown = sink.writer, sink.unknown
    check = record_checker("openchat", default_condition)
    for line in iter_raw_lines(stream, max_line_bytes):
        counts.lines += 1
        if not line.truncated and not line.data.strip():
            counts.blank += 1
            continue
        if not line.truncated:
            conv = fast.parse(line.data)
            if conv is not None:
                counts.valid += 1
                if conv.__pydantic_extra__ or any(m.__pydantic_extra__ for m in conv.items):
                    unknown.update(fast.unknown_keys(conv))
                condition = conv.condition if default_condition is None or "condition" in conv.model_fields_set else default_condition
                writer.write_messages(source, line.number, condition, conv.system, [m.role for m in conv.items],
                                      [m.content for m in conv.items], [m.weight for m in conv.items])
                continue
            result: Any = parse_line(line.data, check)
        else:
            result = _too_long(line, max_line_bytes)
        if isinstance(result, Rejection):
            sink.reject(counts, source, line, result)
        else:
            sink.accept(counts, source, line.number, result)


def _format_lines(stream: IO[bytes], source: str, counts: SourceCounts, sink: _Sink, fmt: FormatName, max_line_bytes: int,
                  default_condition: str | None) -> None:
    """JSONL of another format: each line parsed, mapped and checked by the same rules."""
    check = record_checker(fmt, default_condition)
    for line in iter_raw_lines(stream, max_line_bytes):
        counts.lines += 1
        if not line.truncated and not line.data.strip():
            counts.blank += 1
            continue
        result = _too_long(line, max_line_bytes) if line.truncated else parse_line(line.data, check)
        if isinstance(result, Rejection):
            sink.reject(counts, source, line, result)
        else:
            sink.accept(counts, source, line.number, result)


def _records(path: Path, kind: InputKind, source: str, counts: SourceCounts, sink: _Sink, fmt: FormatName, default_condition: str | None,
             batch_rows: int) -> None:
    """Parsed records (JSON array, Parquet, `datasets`): mapped and checked; none is blank."""
    check = record_checker(fmt, default_condition)
    for number, record in iter_records(path, kind, batch_rows):
        counts.lines += 1
        result = check(record)
        if isinstance(result, Rejection):
            sink.reject(counts, source, RawLine(number, record_bytes(record)), result)
        else:
            sink.accept(counts, source, number, result)


def resolve_format(spec: InputSource, kind: InputKind, max_line_bytes: int) -> tuple[FormatName, bool]:
    """The source's format, and whether it was detected (`auto`: from Arrow column names, or the first records)."""
    if spec.format != "auto":
        if spec.format not in FORMAT_CHOICES:
            raise ValueError(f"{spec.path}: unknown format {spec.format!r}; choose one of {', '.join(FORMAT_CHOICES)}")
        return spec.format, False  # type: ignore[return-value]
    if kind in ("parquet", "datasets"):
        names = column_names(spec.path, kind)
        found = detect_from_keys(names)
        if found is None:
            raise FormatDetectionError(f"{spec.path}: cannot tell the format from its columns {names}; pass --format (or `format:` in the data source)")
        return found, True
    if kind == "json":
        return choose_format(sample_records(spec.path, kind), str(spec.path)), True
    with open_input(spec.path) as stream:
        return choose_format(sample_records(spec.path, kind, iter_raw_lines(stream, max_line_bytes)), str(spec.path)), True


def _validate_into(specs: list[InputSource], out: Path, quarantine_tmp: Path, fast: FastPath, report: ValidationReport,
                   by_code: Counter[str], unknown: Counter[str], max_line_bytes: int, batch_rows: int) -> None:
    with ConversationWriter(out / "conversations.parquet", batch_rows=batch_rows) as writer, open(quarantine_tmp, "w", encoding="utf-8") as quarantine:
        sink = _Sink(writer, quarantine, by_code, unknown)
        for spec in specs:
            source = str(spec.path)
            kind = input_kind(spec.path)
            fmt, detected = resolve_format(spec, kind, max_line_bytes)
            counts = report.sources.setdefault(source, SourceCounts(format=fmt, detected=detected))
            if kind == "jsonl":
                with open_input(spec.path) as stream:
                    if fmt == "openchat":
                        _openchat_lines(stream, source, counts, sink, fast, max_line_bytes, spec.condition)
                    else:
                        _format_lines(stream, source, counts, sink, fmt, max_line_bytes, spec.condition)
            else:
                _records(spec.path, kind, source, counts, sink, fmt, spec.condition, batch_rows)


def validate_files(
    inputs: Sequence[Path | str | InputSource],
    out_dir: Path | str,
    *,
    format: str = "openchat",  # noqa: A002 - the CLI option's name
    condition: str | None = None,
    max_rejected_fraction: float | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_rows: int = 4096,
) -> ValidationReport:
    """Validate inputs into `out_dir/{conversations.parquet, quarantine.jsonl, report.json}`.

    A plain path takes `format` and `condition`; an `InputSource` carries its own. Raises
    `RejectedFractionExceeded` after writing all three outputs when the rejected share is above
    `max_rejected_fraction`, so the quarantine can be inspected.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = [p if isinstance(p, InputSource) else InputSource(Path(p), format, condition) for p in inputs]
    for spec in specs:
        if not spec.path.is_file() and not spec.path.is_dir():
            raise FileNotFoundError(f"input file not found: {spec.path}")

    report = ValidationReport(max_rejected_fraction=max_rejected_fraction)
    by_code: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    fast = FastPath()
    quarantine_tmp = out / "quarantine.jsonl.partial"
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived objects; cyclic collections would traverse them over and over
    try:
        _validate_into(specs, out, quarantine_tmp, fast, report, by_code, unknown, max_line_bytes, batch_rows)
    except BaseException:
        quarantine_tmp.unlink(missing_ok=True)
        raise
    finally:
        if gc_was_enabled:
            gc.enable()
    quarantine_tmp.replace(out / "quarantine.jsonl")
    for counts in report.sources.values():
        report.lines += counts.lines
        report.valid += counts.valid
        report.rejected += counts.rejected
        report.blank += counts.blank
    report.by_code = dict(sorted(by_code.items()))
    report.unknown_keys = dict(sorted(unknown.items()))
    if report.lines != report.valid + report.rejected + report.blank:  # pragma: no cover - invariant guard
        raise AssertionError(f"line accounting broken: {report.to_json()}")
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")

    if max_rejected_fraction is not None and report.rejected_fraction > max_rejected_fraction:
        raise RejectedFractionExceeded(
            f"{report.rejected} of {report.valid + report.rejected} non-blank lines were rejected "
            f"({report.rejected_fraction:.1%}), above the allowed {max_rejected_fraction:.1%}. "
            f"See {out / 'quarantine.jsonl'} for each line's reason, fix the inputs, or raise max_rejected_fraction."
        )
    return report
