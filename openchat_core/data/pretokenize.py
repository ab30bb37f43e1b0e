"""Pretokenization into OpenChat's training Parquet (`openchat pretokenize`).

The output has exactly the columns OpenChat's `generate_dataset` writes, with equal values for
every conversation, so OpenChat's trainer and ours read the same files:

    total_length int32, num_seqs float32, seqlens list<int32>, nz_input_ids list<int32>,
    nz_position_ids list<int32>, nz_shifted_label_ids list<int32>, nz_shifted_loss_weights list<float32>

plus schema metadata `metadata_json` (model_type, tokenizer fingerprint, template, max context,
options, source digest, counts).

Why it is faster than OpenChat's: no Ray start-up, JSON decoded without pydantic, one Rust batch
call per record batch for all message texts, and the per-token work (truncation, trailing
zero-weight removal, label shifting, position ids) done with numpy on flat arrays and handed to
Arrow as offsets + values instead of Python lists of lists. Record batches stream through a
bounded window of worker processes, in input order, so memory is bounded and output deterministic.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from openchat_core import __version__
from openchat_core.data.conversations_io import iter_conversation_batches
from openchat_core.data.rules import FastPath, Rejection, parse_line
from openchat_core.data.validate import iter_raw_lines, open_input
from openchat_core.digest import file_digest
from openchat_core.templates.chat_template import ConversationRenderError
from openchat_core.templates.conversation import MissingWeightError
from openchat_core.templates.specs import AnySpec, AnyTemplate

PAD_TOKEN_ID = 0
OPENCHAT_SCHEMA = pa.schema([
    pa.field("total_length", pa.int32()),
    pa.field("num_seqs", pa.float32()),
    pa.field("seqlens", pa.list_(pa.int32())),
    pa.field("nz_input_ids", pa.list_(pa.int32())),
    pa.field("nz_position_ids", pa.list_(pa.int32())),
    pa.field("nz_shifted_label_ids", pa.list_(pa.int32())),
    pa.field("nz_shifted_loss_weights", pa.list_(pa.float32())),
])


class PretokenizeInputError(ValueError):
    """An input conversation cannot be tokenized (invalid, or missing weights); names file, line and field."""


@dataclass
class BatchStats:
    conversations: int = 0
    rows: int = 0
    dropped_no_supervision: int = 0
    truncated: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    num_seqs: float = 0.0

    def add(self, other: BatchStats) -> None:
        for name in ("conversations", "rows", "dropped_no_supervision", "truncated", "tokens", "supervised_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.num_seqs += other.num_seqs


@dataclass
class PretokenizeReport:
    output: str
    model_type: str
    tokenizer_fingerprint: str
    max_context: int
    per_sequence_loss: bool
    source_digest: str
    counts: BatchStats = field(default_factory=BatchStats)
    length_percentiles: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pack_conversations(segments: list[list[tuple[list[int], float]]], max_context: int) -> tuple[pa.RecordBatch, BatchStats, np.ndarray]:
    """Turn template segments into OpenChat rows: truncate, drop trailing zero-weight tokens, shift labels.

    Equivalent to OpenChat's per-conversation `tokens[:max_context]` + `add_single_conv`, done on
    flat arrays. Returns the record batch, its stats and the row lengths.
    """
    stats = BatchStats(conversations=len(segments))
    seg_ids = [ids for conv in segments for ids, _ in conv]
    seg_lens = np.fromiter((len(ids) for ids in seg_ids), dtype=np.int64, count=len(seg_ids))
    seg_weights = np.fromiter((w for conv in segments for _, w in conv), dtype=np.float64, count=len(seg_ids))
    flat_tokens = np.fromiter(itertools.chain.from_iterable(seg_ids), dtype=np.int32, count=int(seg_lens.sum()))
    flat_weights = np.repeat(seg_weights, seg_lens)

    segs_per_conv = np.fromiter((len(c) for c in segments), dtype=np.int64, count=len(segments))
    conv_lens = np.add.reduceat(seg_lens, np.concatenate(([0], np.cumsum(segs_per_conv)[:-1]))) if len(segments) else seg_lens[:0]
    conv_starts = np.concatenate(([0], np.cumsum(conv_lens)[:-1])) if len(segments) else conv_lens
    trunc_ends = conv_starts + np.minimum(conv_lens, max_context)
    stats.truncated = int(np.count_nonzero(conv_lens > max_context))

    # Last non-zero weight before each truncated end: OpenChat drops everything after it.
    nonzero = np.flatnonzero(flat_weights != 0)
    pos = np.searchsorted(nonzero, trunc_ends) - 1
    last_nz = np.where(pos >= 0, nonzero[np.maximum(pos, 0)], -1) if len(nonzero) else np.full(len(trunc_ends), -1)
    keep = last_nz >= conv_starts
    stats.dropped_no_supervision = int(np.count_nonzero(~keep))
    starts = conv_starts[keep]
    lengths = (last_nz[keep] - starts + 1).astype(np.int64)
    stats.rows = int(len(lengths))

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    row_of_token = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(total, dtype=np.int64) - offsets[:-1][row_of_token]
    src = starts[row_of_token] + position
    tokens = flat_tokens[src]
    weights = flat_weights[src]
    labels = np.where(weights != 0, tokens, PAD_TOKEN_ID).astype(np.int32)

    is_last = np.zeros(total, dtype=bool)
    if total:
        is_last[offsets[1:] - 1] = True
    nxt = np.minimum(np.arange(total) + 1, max(total - 1, 0))
    shifted_labels = np.where(is_last, PAD_TOKEN_ID, labels[nxt]).astype(np.int32)
    shifted_weights64 = np.where(is_last, 0.0, weights[nxt])
    # OpenChat sums the shifted weights as Python floats, left to right, then stores float32.
    num_seqs = np.array([np.cumsum(shifted_weights64[offsets[i]:offsets[i + 1]])[-1] for i in range(len(lengths))], dtype=np.float64)

    stats.tokens = total
    stats.supervised_tokens = int(np.count_nonzero(shifted_weights64))
    stats.num_seqs = float(num_seqs.sum())
    offsets32 = pa.array(offsets, pa.int32())
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(lengths, pa.int32()),
            pa.array(num_seqs.astype(np.float32), pa.float32()),
            pa.ListArray.from_arrays(pa.array(np.arange(len(lengths) + 1), pa.int32()), pa.array(lengths, pa.int32())),
            pa.ListArray.from_arrays(offsets32, pa.array(tokens, pa.int32())),
            pa.ListArray.from_arrays(offsets32, pa.array(position, pa.int32())),
            pa.ListArray.from_arrays(offsets32, pa.array(shifted_labels, pa.int32())),
            pa.ListArray.from_arrays(offsets32, pa.array(shifted_weights64.astype(np.float32), pa.float32())),
        ],
        schema=OPENCHAT_SCHEMA,
    )
    return batch, stats, lengths


@dataclass(frozen=True)
class _Chunk:
    """A unit of work: Parquet rows, or raw JSONL lines with their source and first line number."""

    source: str
    first_line: int
    jsonl_lines: tuple[bytes, ...] | None = None
    parquet_rows: pa.RecordBatch | None = None


def _conversations_of(chunk: _Chunk) -> tuple[list[dict[str, Any]], list[str]]:
    """Decode a chunk into conversation dicts and their `file:line` locations (for error messages)."""
    if chunk.parquet_rows is not None:
        rows = chunk.parquet_rows.to_pylist()
        return rows, [f"{r['source']}:{r['line']}" for r in rows]
    convs, where = [], []
    fast = FastPath()
    for offset, raw in enumerate(chunk.jsonl_lines or ()):
        line_no = chunk.first_line + offset
        if not raw.strip():
            continue
        conv = fast.parse(raw)  # the common valid line, checked in pydantic-core; refusals get the exact error below
        if conv is not None:
            convs.append(conv.model_dump())
            where.append(f"{chunk.source}:{line_no}")
            continue
        result = parse_line(raw)
        if isinstance(result, Rejection):
            field_part = f" [field {result.field}]" if result.field else ""
            raise PretokenizeInputError(f"{chunk.source}:{line_no}{field_part}: {result.message} ({result.code}). "
                                        f"Run `openchat validate` first to quarantine bad lines.")
        convs.append({"items": result.items, "condition": result.condition, "system": result.system})
        where.append(f"{chunk.source}:{line_no}")
    return convs, where


def process_chunk(template: AnyTemplate, chunk: _Chunk, per_sequence_loss: bool) -> tuple[pa.RecordBatch, BatchStats, np.ndarray]:
    """Tokenize and pack one chunk. The cyclic GC is paused meanwhile: the chunk creates millions of short-lived
    token-id lists, and collections triggered by them (traversing every live list) cost as much as the tokenization."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _process_chunk(template, chunk, per_sequence_loss)
    finally:
        if enabled:
            gc.enable()


def _process_chunk(template: AnyTemplate, chunk: _Chunk, per_sequence_loss: bool) -> tuple[pa.RecordBatch, BatchStats, np.ndarray]:
    convs, where = _conversations_of(chunk)
    try:
        segments = template.segments(convs, inference=False, per_sequence_loss=per_sequence_loss)
    except MissingWeightError as e:
        raise PretokenizeInputError(f"{where[e.conversation_index]} [field {e.field}]: weight is not set; assign weights "
                                    f"first (`openchat assign-weights`) or give every message a weight") from None
    except ConversationRenderError as e:
        raise PretokenizeInputError(f"{where[e.conversation_index]}: {e}") from None
    return pack_conversations(segments, template.model_type.max_context)


class _WorkerState:
    """The per-process template of a pool worker, set once by the pool initializer (specs are MBs; send them once)."""

    template: AnyTemplate | None = None
    per_sequence_loss: bool = False


def _init_worker(spec: AnySpec, per_sequence_loss: bool) -> None:
    _WorkerState.template = spec.build()
    _WorkerState.per_sequence_loss = per_sequence_loss


def _work(chunk: _Chunk) -> tuple[pa.RecordBatch, BatchStats, np.ndarray]:
    assert _WorkerState.template is not None, "worker not initialised"
    return process_chunk(_WorkerState.template, chunk, _WorkerState.per_sequence_loss)


def iter_chunks(path: Path, batch_rows: int) -> Iterator[_Chunk]:
    """Stream an input (Parquet from the earlier stages, or JSONL/JSONL.gz) as chunks of `batch_rows` conversations."""
    if path.suffix == ".parquet":
        for batch in iter_conversation_batches(path, batch_rows):
            yield _Chunk(source=str(path), first_line=0, parquet_rows=batch)
        return
    with open_input(path) as stream:
        lines: list[bytes] = []
        first = 1
        for raw in iter_raw_lines(stream):
            if raw.truncated:
                raise PretokenizeInputError(f"{path}:{raw.number}: line of {raw.length} bytes is too long; run `openchat validate` first")
            if not lines:
                first = raw.number
            lines.append(raw.data)
            if len(lines) >= batch_rows:
                yield _Chunk(str(path), first, tuple(lines))
                lines = []
        if lines:
            yield _Chunk(str(path), first, tuple(lines))


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    if not len(lengths):
        return {}
    qs = (50, 90, 99, 100)
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(lengths, qs))} | {"mean": float(lengths.mean())}


def pretokenize_file(
    input_path: Path | str,
    output_path: Path | str,
    spec: AnySpec,
    *,
    tokenizer_fingerprint: str,
    per_sequence_loss: bool = False,
    workers: int = 1,
    batch_rows: int = 2048,
) -> PretokenizeReport:
    """Tokenize `input_path` into `output_path` (OpenChat's schema), atomically; returns counts and length stats.

    `workers > 1` tokenizes record batches in that many processes (spawned, so no tokenizer state is
    forked); at most 2 x workers batches are in flight, and batches are written in input order.
    """
    src, out = Path(input_path), Path(output_path)
    if not src.is_file():
        raise FileNotFoundError(f"input not found: {src}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".rows.arrow.partial")
    report = PretokenizeReport(output=str(out), model_type=spec.model_type.name, tokenizer_fingerprint=tokenizer_fingerprint,
                               max_context=spec.model_type.max_context, per_sequence_loss=per_sequence_loss,
                               source_digest=file_digest(src))
    all_lengths: list[np.ndarray] = []
    writer = pa.ipc.new_file(staging, OPENCHAT_SCHEMA)  # Arrow IPC staging: no encoding; Parquet is encoded once, at the end
    try:
        for batch, stats, lengths in _run_chunks(iter_chunks(src, batch_rows), spec, per_sequence_loss, workers):
            if batch.num_rows:
                writer.write_batch(batch)
            report.counts.add(stats)
            all_lengths.append(lengths.astype(np.int32))
    except BaseException:
        writer.close()
        staging.unlink(missing_ok=True)
        raise
    writer.close()
    report.length_percentiles = _percentiles(np.concatenate(all_lengths) if all_lengths else np.zeros(0, np.int32))
    _finalize(staging, out, _metadata_json(report, spec))
    return report


def _run_chunks(chunks: Iterator[_Chunk], spec: AnySpec, per_sequence_loss: bool, workers: int):
    if workers <= 1:
        template = spec.build()
        for chunk in chunks:
            yield process_chunk(template, chunk, per_sequence_loss)
        return
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(spec, per_sequence_loss)) as pool:
        pending: deque[cf.Future] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_work, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _metadata_json(report: PretokenizeReport, spec: AnySpec) -> bytes:
    return orjson.dumps({
        "model_type": spec.model_type.name,
        "tokenizer_fingerprint": report.tokenizer_fingerprint,
        "template": spec.metadata(),
        "max_context": report.max_context,
        "per_sequence_loss": report.per_sequence_loss,
        "source_digest": report.source_digest,
        "counts": asdict(report.counts),
        "length_percentiles": report.length_percentiles,
        "created_by": f"openchat-pipeline {__version__}",
    })


def _finalize(staging: Path, out: Path, metadata_json: bytes) -> None:
    """Encode the staged Arrow batches into Parquet with the final schema metadata (counts are only known now).

    Arrow fixes a Parquet file's schema metadata when the writer opens, so the rows are staged as
    Arrow IPC (memory-mapped, no encoding) and written to Parquet once, one row group per batch.
    """
    schema = OPENCHAT_SCHEMA.with_metadata({"metadata_json": metadata_json})
    partial = out.with_name(out.name + ".partial")
    with pa.memory_map(str(staging)) as source, pq.ParquetWriter(partial, schema, compression="snappy") as writer:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            writer.write_batch(reader.get_batch(i).replace_schema_metadata(schema.metadata))
    staging.unlink()
    partial.replace(out)


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The `metadata_json` of a pretokenized file (what OpenChat's dataset reads for `model_type`)."""
    raw = pq.read_schema(path).metadata or {}
    if b"metadata_json" not in raw:
        raise ValueError(f"{path} has no metadata_json: not produced by `openchat pretokenize` or OpenChat's generate_dataset")
    return json.loads(raw[b"metadata_json"])


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
