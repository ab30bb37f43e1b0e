"""Arrow schema and streaming IO for validated/weighted conversation Parquet files.

Both the validation and the weight-assignment stage write this schema; the pretokenizer reads
it. Reading and writing go in record batches so memory stays bounded by the batch size, not
the dataset size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.float64())])
CONVERSATION_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("line", pa.int64()),
        ("condition", pa.string()),
        ("system", pa.string()),
        ("items", pa.list_(MESSAGE_TYPE)),
    ]
)
COLUMNS = tuple(CONVERSATION_SCHEMA.names)


class ConversationWriter:
    """Buffers conversation rows as flat columns and writes them as Parquet row groups of `batch_rows` rows.

    Messages are kept as three flat lists plus offsets, so turning a batch into Arrow is a few C-level
    array conversions instead of a per-row walk over Python dicts. Writes go to `<path>.partial` and
    are renamed on `close()`, so a crash never leaves a file that looks complete.
    """

    def __init__(self, path: Path, metadata: dict[str, str] | None = None, batch_rows: int = 4096) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        schema = CONVERSATION_SCHEMA.with_metadata(metadata) if metadata else CONVERSATION_SCHEMA
        self._writer = pq.ParquetWriter(self._partial, schema, compression="zstd")
        self._batch_rows = batch_rows
        self.rows_written = 0
        self._reset()

    def _reset(self) -> None:
        self._sources: list[str] = []
        self._lines: list[int] = []
        self._conditions: list[str] = []
        self._systems: list[str] = []
        self._roles: list[str] = []
        self._contents: list[str] = []
        self._weights: list[float | None] = []
        self._offsets: list[int] = [0]

    def write_messages(self, source: str, line: int, condition: str, system: str,
                       roles: Iterable[str], contents: Iterable[str], weights: Iterable[float | None]) -> None:
        """Add one conversation given as parallel sequences of message fields."""
        self._sources.append(source)
        self._lines.append(line)
        self._conditions.append(condition)
        self._systems.append(system)
        self._roles.extend(roles)
        self._contents.extend(contents)
        self._weights.extend(weights)
        self._offsets.append(len(self._roles))
        if len(self._lines) >= self._batch_rows:
            self.flush()

    def write(self, source: str, line: int, condition: str, system: str, items: list[dict[str, Any]]) -> None:
        """Add one conversation given as message dicts ({role, content, weight})."""
        self.write_messages(source, line, condition, system, [m["role"] for m in items], [m["content"] for m in items],
                            [m["weight"] for m in items])

    def flush(self) -> None:
        n = len(self._lines)
        if not n:
            return
        messages = pa.StructArray.from_arrays(
            [pa.array(self._roles, pa.string()), pa.array(self._contents, pa.string()), pa.array(self._weights, pa.float64())],
            fields=list(MESSAGE_TYPE))
        batch = pa.RecordBatch.from_arrays(
            [pa.array(self._sources, pa.string()), pa.array(self._lines, pa.int64()), pa.array(self._conditions, pa.string()),
             pa.array(self._systems, pa.string()), pa.ListArray.from_arrays(pa.array(self._offsets, pa.int32()), messages)],
            schema=CONVERSATION_SCHEMA)
        self._writer.write_batch(batch)
        self.rows_written += n
        self._reset()

    def close(self) -> None:
        self.flush()
        self._writer.close()
        self._partial.replace(self.path)

    def abort(self) -> None:
        self._writer.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> ConversationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_conversation_file(path: Path) -> pq.ParquetFile:
    """Open a conversation Parquet file, refusing (with how to make one) a file without the conversation columns."""
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: not a Parquet file ({e}); produce one with `openchat validate`") from None
    missing = set(COLUMNS) - set(parquet.schema_arrow.names)
    if missing:
        raise ValueError(f"{path}: not a conversation Parquet file; missing columns {sorted(missing)} "
                         f"(produce it with `openchat validate`)")
    return parquet


def iter_conversation_batches(path: Path, batch_rows: int = 4096) -> Iterator[pa.RecordBatch]:
    """Stream a conversation Parquet file in record batches of at most `batch_rows` rows."""
    yield from open_conversation_file(path).iter_batches(batch_size=batch_rows, columns=list(COLUMNS))
