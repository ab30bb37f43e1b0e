"""Arrow schema and streaming IO for validated/weighted conversation Parquet files.

Both the validation and the weight-assignment stage write this schema; the pretokenizer reads
it. Reading and writing go in record batches so memory stays bounded by the batch size, not
the dataset size.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    """Buffers conversation rows and writes them as Parquet row groups of `batch_rows` rows.

    Writes go to `<path>.partial` and are renamed on `close()`, so a crash never leaves a file
    that looks complete.
    """

    def __init__(self, path: Path, metadata: dict[str, str] | None = None, batch_rows: int = 4096) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        schema = CONVERSATION_SCHEMA.with_metadata(metadata) if metadata else CONVERSATION_SCHEMA
        self._writer = pq.ParquetWriter(self._partial, schema, compression="zstd")
        self._schema = schema
        self._batch_rows = batch_rows
        self._columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self.rows_written = 0

    def write(self, source: str, line: int, condition: str, system: str, items: list[dict[str, Any]]) -> None:
        cols = self._columns
        cols["source"].append(source)
        cols["line"].append(line)
        cols["condition"].append(condition)
        cols["system"].append(system)
        cols["items"].append(items)
        if len(cols["line"]) >= self._batch_rows:
            self.flush()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.flush()
        self._writer.write_batch(batch.select(list(COLUMNS)).cast(CONVERSATION_SCHEMA))
        self.rows_written += batch.num_rows

    def flush(self) -> None:
        n = len(self._columns["line"])
        if not n:
            return
        self._writer.write_batch(pa.RecordBatch.from_pydict(self._columns, schema=CONVERSATION_SCHEMA))
        self.rows_written += n
        self._columns = {name: [] for name in COLUMNS}

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


def iter_conversation_batches(path: Path, batch_rows: int = 4096) -> Iterator[pa.RecordBatch]:
    """Stream a conversation Parquet file in record batches of at most `batch_rows` rows."""
    parquet = pq.ParquetFile(path)
    missing = set(COLUMNS) - set(parquet.schema_arrow.names)
    if missing:
        raise ValueError(f"{path}: not a conversation Parquet file; missing columns {sorted(missing)} "
                         f"(produce it with `openchat validate`)")
    yield from parquet.iter_batches(batch_size=batch_rows, columns=list(COLUMNS))
