"""Mixing sources (`openchat mix`, the pipeline's mix stage): length filters, cross-source dedup, per-source caps.

C-RLFT classes are built by source: the GPT-4 conversations form one condition and the GPT-3.5 ones
another, and the same conversation often sits in both. This step runs between validation and
weights, in this order:

1. length filters (turns, characters: system prompt plus every message);
2. exact-duplicate removal across all sources, keyed on the normalised conversation text (system
   prompt, roles and contents, whitespace runs collapsed and ends stripped); of each group the copy
   whose condition has the highest C-RLFT weight is kept, then the earliest;
3. per-source caps (`max_conversations`) and sampling (`sample_fraction`), seeded: each source
   keeps the conversations whose key, hashed with the seed, ranks lowest, so the choice does not
   depend on the order of the rows and changes only with the seed (and, since polars' hash is
   not promised stable across its releases, possibly with the polars version).

Only a narrow table (row number, source, condition, two 64-bit hashes, lengths: ~60 bytes a
conversation) is held in memory; polars computes it from the Parquet with its streaming engine,
and the kept rows are copied batch by batch, so the text itself is never loaded whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openchat_core.data.conversations_io import open_conversation_file

STATUSES = ("too_short", "too_long", "duplicate", "sampled_out", "kept")


class MixPolicy(BaseModel):
    """How sources are mixed: dedup, length filters and the sampling seed (per-source caps live on each source)."""

    model_config = ConfigDict(extra="forbid")

    dedup: bool = Field(True, description="drop exact duplicates across sources (normalised text), keeping the higher-weight copy")
    seed: int = Field(0, description="seed of per-source sampling; the same seed keeps the same conversations")
    min_turns: int = Field(1, ge=1, description="drop conversations with fewer messages")
    max_turns: int | None = Field(None, ge=1, description="drop conversations with more messages")
    min_chars: int = Field(0, ge=0, description="drop conversations with fewer characters (system + messages)")
    max_chars: int | None = Field(None, ge=1, description="drop conversations with more characters")

    @model_validator(mode="after")
    def _ranges(self) -> MixPolicy:
        if self.max_turns is not None and self.max_turns < self.min_turns:
            raise ValueError(f"max_turns={self.max_turns} is below min_turns={self.min_turns}; raise max_turns or lower min_turns")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars={self.max_chars} is below min_chars={self.min_chars}; raise max_chars or lower min_chars")
        return self


@dataclass(frozen=True)
class SourceLimits:
    """One data source: its name in reports, the files it validated from, and its cap and sampling share."""

    name: str
    files: tuple[str, ...]
    max_conversations: int | None = None
    sample_fraction: float | None = None


def _normalised(expr: Any) -> Any:
    # Same result as replacing r"\s+" with " ", about 2x faster: a lone space (most whitespace) is not a match.
    return expr.str.replace_all(r"\s\s+|[^\S ]", " ").str.strip_chars()


def _narrow_table(in_path: Path, weights: Mapping[str, float], default_weight: float, seed: int) -> Any:
    """Per conversation: row number, file, condition, weight, turns, characters and a 128-bit text key (two seeded hashes)."""
    import polars as pl

    message = pl.element().struct
    text = pl.concat_str(
        [_normalised(pl.col("system").fill_null("")),
         pl.col("items").list.eval(message.field("role") + "\x1f" + _normalised(message.field("content"))).list.join("\x1e")],
        separator="\x1d")
    lf = (pl.scan_parquet(in_path).with_row_index("order").with_columns(text.alias("text"))
          .select("order", pl.col("source").cast(pl.Categorical), pl.col("condition").fill_null("").cast(pl.Categorical),
                  pl.col("items").list.len().alias("turns"),
                  (pl.col("items").list.eval(message.field("content").str.len_chars()).list.sum().fill_null(0)
                   + pl.col("system").fill_null("").str.len_chars()).alias("chars"),
                  pl.col("text").hash(seed=1).alias("key1"), pl.col("text").hash(seed=2).alias("key2")))
    narrow = lf.collect(engine="streaming")
    weight = pl.col("condition").cast(pl.String).replace_strict({c: float(w) for c, w in weights.items()}, default=float(default_weight),
                                                                 return_dtype=pl.Float64)
    return narrow.with_columns(weight.alias("weight"), pl.col("key1").hash(seed).alias("rank"))


def _statuses(narrow: Any, policy: MixPolicy, sources: Sequence[SourceLimits]) -> Any:
    """The narrow table with `origin` (the source's name) and `status` (one of STATUSES) per conversation."""
    import polars as pl

    origin_of = {f: s.name for s in sources for f in s.files}
    source = pl.col("source").cast(pl.String)
    df = narrow.with_columns(source.replace_strict(origin_of, default=source).cast(pl.Categorical).alias("origin"))
    too_short = (pl.col("turns") < policy.min_turns) | (pl.col("chars") < policy.min_chars)
    too_long = pl.lit(False)
    if policy.max_turns is not None:
        too_long = too_long | (pl.col("turns") > policy.max_turns)
    if policy.max_chars is not None:
        too_long = too_long | (pl.col("chars") > policy.max_chars)
    status = pl.Enum(STATUSES)
    df = df.with_columns(pl.when(too_short).then(pl.lit("too_short", status)).when(too_long).then(pl.lit("too_long", status))
                         .otherwise(pl.lit(None, status)).alias("status"))

    if policy.dedup:
        ranked = (df.filter(pl.col("status").is_null()).select("key1", "key2", "weight", "order")
                  .sort(["key1", "key2", "weight", "order"], descending=[False, False, True, False])
                  .filter(~pl.struct("key1", "key2").is_first_distinct())
                  .select("order"))
        df = df.with_columns(pl.when(pl.col("status").is_null() & pl.col("order").is_in(ranked["order"].implode()))
                             .then(pl.lit("duplicate", status)).otherwise(pl.col("status")).alias("status"))

    sampled_out: list[Any] = []
    for source in sources:
        if source.max_conversations is None and source.sample_fraction is None:
            continue
        pool = df.filter(pl.col("status").is_null() & (pl.col("origin").cast(pl.String) == source.name)).select("order", "rank")
        keep = pool.height
        if source.sample_fraction is not None:
            keep = round(keep * source.sample_fraction)
        if source.max_conversations is not None:
            keep = min(keep, source.max_conversations)
        if keep < pool.height:
            sampled_out.append(pool.sort(["rank", "order"]).slice(keep)["order"])
    if sampled_out:
        dropped = pl.concat(sampled_out)
        df = df.with_columns(pl.when(pl.col("status").is_null() & pl.col("order").is_in(dropped.implode()))
                             .then(pl.lit("sampled_out", status)).otherwise(pl.col("status")).alias("status"))
    return df.with_columns(pl.col("status").fill_null(pl.lit("kept", status)))


def mix_table(df: Any) -> list[dict[str, Any]]:
    """Rows per (source, condition): input conversations and where each went, sorted by source then condition."""
    import polars as pl

    counts = [(pl.col("status") == s).sum().alias(s) for s in STATUSES]
    table = (df.group_by(pl.col("origin").cast(pl.String).alias("source"), pl.col("condition").cast(pl.String))
             .agg(pl.len().alias("input"), *counts).sort("source", "condition"))
    return table.to_dicts()


def _copy_rows(in_path: Path, out_path: Path, kept: np.ndarray, batch_rows: int) -> int:
    """Copy the rows whose 0-based numbers are in the sorted array `kept`, batch by batch, schema unchanged."""
    parquet = pq.ParquetFile(in_path, pre_buffer=False)  # one row group in memory at a time
    partial = out_path.with_name(out_path.name + ".partial")
    written = start = 0
    with pq.ParquetWriter(partial, parquet.schema_arrow, compression="zstd") as writer:
        for batch in parquet.iter_batches(batch_size=batch_rows, use_threads=False):
            mask = np.isin(np.arange(start, start + batch.num_rows), kept, assume_unique=True)
            start += batch.num_rows
            if mask.any():
                chosen = batch.filter(mask)
                writer.write_batch(chosen)
                written += chosen.num_rows
    partial.replace(out_path)
    return written


def mix_file(in_path: Path | str, out_dir: Path | str, policy: MixPolicy, sources: Sequence[SourceLimits] = (),
             condition_weights: Mapping[str, float] | None = None, default_weight: float = 0.0, batch_rows: int = 4096) -> dict[str, Any]:
    """Mix validated conversations into `out_dir/conversations.parquet` and `mix_report.json`; returns the report.

    `condition_weights` decides which copy of a duplicate is kept (conditions it does not name count
    as `default_weight`). Sources not listed in `sources` are named by their file and are not capped.
    """
    in_path, out = Path(in_path), Path(out_dir)
    open_conversation_file(in_path)  # a missing or foreign file fails here, with how to make the right one
    out.mkdir(parents=True, exist_ok=True)
    narrow = _narrow_table(in_path, condition_weights or {}, default_weight, policy.seed)
    df = _statuses(narrow, policy, sources)
    kept = np.sort(df.filter(df["status"] == "kept")["order"].to_numpy())
    written = _copy_rows(in_path, out / "conversations.parquet", kept, batch_rows)
    table = mix_table(df)
    totals = {s: sum(row[s] for row in table) for s in ("input", *STATUSES)}
    if totals["input"] != sum(totals[s] for s in STATUSES) or written != totals["kept"]:  # pragma: no cover - invariant guard
        raise AssertionError(f"mix accounting broken: {totals}, {written} written")
    report = {"policy": policy.model_dump(), "sources": [s.__dict__ | {"files": list(s.files)} for s in sources], "totals": totals, "table": table}
    (out / "mix_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
