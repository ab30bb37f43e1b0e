"""Reading input records from the kinds of files users bring: JSONL(.gz), JSON arrays, Parquet, `datasets` folders.

JSONL is read as raw lines by `validate.iter_raw_lines` (the fast path needs the bytes). The others
yield parsed records with a 1-based record number; Parquet and `datasets` folders are read through
Arrow one record batch at a time, so memory is bounded by the batch, not the file. In Arrow a null
and a missing key are the same thing, so null values are dropped from rows before the rules see them
(`{"from": "gpt", "value": null}` is reported as a missing `value`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

InputKind = Literal["jsonl", "json", "parquet", "datasets"]
DETECT_SAMPLE = 20  # records looked at by `--format auto`


class InputFileError(ValueError):
    """An input cannot be read as a whole (not a JSON array, a `datasets` folder with several splits, ...)."""


def input_kind(path: Path) -> InputKind:
    """How to read `path`: a folder is a `datasets` folder, `.parquet` is Parquet, `.json` a JSON array, anything else JSONL.

    A `.json` file whose first non-blank byte is not `[` is JSON Lines under another name, and read as such.
    """
    if path.is_dir():
        return "datasets"
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix == ".json":
        with open(path, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        return "json" if head.startswith(b"[") else "jsonl"
    return "jsonl"


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def record_bytes(record: Any) -> bytes:
    """A record as JSON bytes, for the quarantine's `raw` (ASCII-escaped when it holds text that UTF-8 cannot encode)."""
    try:
        return orjson.dumps(record, default=str)
    except TypeError:  # lone surrogates: orjson refuses them, the stdlib escapes them
        return json.dumps(record, default=str).encode()


def _json_array(path: Path) -> list[Any]:
    data = path.read_bytes()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # the stdlib accepts NaN and lone surrogates, which the rules then reject per record
            value = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputFileError(f"{path}: not a valid JSON array ({e}); a file with one record per line should be .jsonl") from None
    if not isinstance(value, list):
        raise InputFileError(f"{path}: a .json input must hold a JSON array of records, got a JSON {type(value).__name__}")
    return value


def _dataset(path: Path):  # noqa: ANN202 - datasets.Dataset; imported here because `datasets` is slow to import
    try:
        from datasets import Dataset, load_from_disk
    except ImportError:
        raise InputFileError(f"{path}: reading a `datasets` folder needs the `datasets` package (requirements/pipeline.txt)") from None

    loaded = load_from_disk(str(path))
    if not isinstance(loaded, Dataset):
        splits = ", ".join(str(path / s) for s in loaded)
        raise InputFileError(f"{path}: a `datasets` folder with several splits; give one split's folder: {splits}")
    return loaded


def _arrow_batches(path: Path, kind: InputKind, batch_rows: int) -> Iterator[Any]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    else:
        yield from _dataset(path).with_format("arrow").iter(batch_size=batch_rows)


def iter_records(path: Path, kind: InputKind, batch_rows: int = 1024) -> Iterator[tuple[int, Any]]:
    """(record number, record) for a JSON array, Parquet file or `datasets` folder."""
    if kind == "json":
        yield from enumerate(_json_array(path), start=1)
        return
    if kind not in ("parquet", "datasets"):
        raise ValueError(f"{path}: iter_records reads json, parquet and datasets inputs, not {kind}")
    number = 0
    for batch in _arrow_batches(path, kind, batch_rows):
        for row in batch.to_pylist():
            number += 1
            yield number, _without_nulls(row)


def column_names(path: Path, kind: InputKind) -> list[str]:
    """The top-level fields of an Arrow input, which name its format exactly."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    return list(_dataset(path).column_names)


def sample_records(path: Path, kind: InputKind, lines: Iterator[Any] | None = None) -> list[Any]:
    """The first records of a JSONL or JSON input, parsed (lines that do not parse are skipped), for detection."""
    if kind == "json":
        return [record for _, record in islice(iter_records(path, kind), DETECT_SAMPLE)]
    out = []
    tried = 0
    for line in lines or ():
        if len(out) >= DETECT_SAMPLE or tried >= 5 * DETECT_SAMPLE:
            break
        if line.truncated or not line.data.strip():
            continue
        tried += 1
        try:
            out.append(orjson.loads(line.data))
        except orjson.JSONDecodeError:
            continue
    return out


class DataSource(BaseModel):
    """One source of a split in the pipeline config: its files, format and C-RLFT condition, and how much of it to use.

    Each source is one C-RLFT class: its `condition` goes to every record that carries none.
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file, glob or `datasets` folder, relative to the config's folder")
    format: Literal["auto", "openchat", "messages", "sharegpt", "alpaca"] = Field("auto", description="record format; auto detects it per file")
    condition: str | None = Field(None, description="condition for records without one, e.g. 'GPT4'")
    max_conversations: int | None = Field(None, ge=1, description="keep at most this many conversations (seeded sample, after dedup)")
    sample_fraction: float | None = Field(None, gt=0, le=1, description="keep this share of the conversations (seeded sample, after dedup)")
