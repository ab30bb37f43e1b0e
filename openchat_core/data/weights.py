"""C-RLFT condition weights (`openchat assign-weights`).

OpenChat's C-RLFT treats each data source as a condition ("GPT4", "GPT3", ...) and weights the
loss of its assistant turns by the source's quality; user turns are never learned from. This
stage turns a condition -> weight map into per-message weights and reports, per condition,
how much supervision each class actually contributes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openchat_core.data.conversations_io import ConversationWriter, iter_conversation_batches


class UnknownConditionError(ValueError):
    """Conversations carry conditions that the weight map does not name."""


class WeightPolicy(BaseModel):
    """How weights are assigned. `condition_weights` maps a condition string to its loss weight."""

    model_config = ConfigDict(extra="forbid")

    condition_weights: dict[str, float] = Field(description="condition -> weight of its assistant turns, e.g. {GPT4: 1.0, GPT3: 0.1}")
    explicit_weights: Literal["keep", "override"] = Field(
        "override", description="'keep' leaves weights already present in the data; 'override' replaces them")
    unknown_condition: Literal["error", "default"] = Field(
        "error", description="'error' stops on a condition missing from the map; 'default' gives it default_weight")
    default_weight: float = Field(1.0, ge=0, description="weight for unknown conditions when unknown_condition='default'")

    @field_validator("condition_weights")
    @classmethod
    def _weights_are_finite_and_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("condition_weights is empty; give at least one condition, e.g. {'GPT4': 1.0, 'GPT3': 0.1}")
        for condition, weight in value.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight for condition {condition!r} must be a finite number >= 0, got {weight}")
        return value

    def weight_for(self, condition: str) -> float | None:
        """The assistant weight of a condition, or None when unknown and the policy is 'error'."""
        if condition in self.condition_weights:
            return self.condition_weights[condition]
        return self.default_weight if self.unknown_condition == "default" else None


def parse_weight_pairs(pairs: Sequence[str]) -> dict[str, float]:
    """Parse CLI pairs like `GPT4=1.0` or `"GPT4 Correct=1"` into a map; the condition may contain spaces."""
    weights: dict[str, float] = {}
    for pair in pairs:
        condition, sep, value = pair.rpartition("=")
        if not sep:
            raise ValueError(f"bad weight {pair!r}: write CONDITION=WEIGHT, e.g. GPT4=1.0")
        try:
            weights[condition] = float(value)
        except ValueError:
            raise ValueError(f"bad weight {pair!r}: {value!r} is not a number") from None
    return weights


@dataclass
class ConditionStats:
    conversations: int = 0
    assistant_turns: int = 0
    supervised_turns: int = 0
    supervised_chars: int = 0
    weight: float | None = None


@dataclass
class WeightsReport:
    conversations: int = 0
    kept_explicit: int = 0
    conditions: dict[str, ConditionStats] = field(default_factory=dict)
    unknown_conditions: dict[str, int] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def assign_weights(messages: list[dict[str, Any]], assistant_weight: float, keep_explicit: bool) -> tuple[list[dict[str, Any]], int]:
    """Return the messages with weights set (user 0, assistant `assistant_weight`) and how many explicit ones were kept."""
    kept = 0
    out = []
    for msg in messages:
        weight = msg.get("weight")
        if keep_explicit and weight is not None:
            kept += 1
        else:
            weight = assistant_weight if msg["role"] == "assistant" else 0.0
        out.append({"role": msg["role"], "content": msg["content"], "weight": float(weight)})
    return out, kept


def assign_weights_file(in_path: Path | str, out_dir: Path | str, policy: WeightPolicy, batch_rows: int = 4096) -> WeightsReport:
    """Stream validated conversations into `out_dir/weighted.parquet` and `weights_report.json`.

    With `unknown_condition='error'`, every unknown condition is collected (with its count and
    first location) and reported together, and no output is left behind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = WeightsReport(policy=policy.model_dump())
    first_seen: dict[str, str] = {}
    metadata = {"weight_policy": policy.model_dump_json()}
    keep = policy.explicit_weights == "keep"
    with ConversationWriter(out / "weighted.parquet", metadata=metadata, batch_rows=batch_rows) as writer:
        for batch in iter_conversation_batches(Path(in_path), batch_rows):
            for row in batch.to_pylist():
                condition = row["condition"] or ""
                weight = policy.weight_for(condition)
                if weight is None:
                    report.unknown_conditions[condition] = report.unknown_conditions.get(condition, 0) + 1
                    first_seen.setdefault(condition, f"{row['source']}:{row['line']}")
                    continue
                items, kept = assign_weights(row["items"], weight, keep)
                report.kept_explicit += kept
                report.conversations += 1
                writer.write(row["source"], row["line"], condition, row["system"] or "", items)
        if report.unknown_conditions:
            listing = ", ".join(f"{c!r} ({n} conversations, first at {first_seen[c]})" for c, n in sorted(report.unknown_conditions.items()))
            raise UnknownConditionError(
                f"conditions missing from the weight map: {listing}. Known: {sorted(policy.condition_weights)}. "
                f"Add them (e.g. --weight 'NAME=0.1'), or set unknown_condition='default' with a default_weight.")
    report.conditions = condition_stats(out / "weighted.parquet", policy)
    (out / "weights_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def condition_stats(weighted: Path, policy: WeightPolicy) -> dict[str, ConditionStats]:
    """Per condition of a weighted file: conversations, assistant turns, supervised turns and characters (polars, streaming)."""
    import polars as pl

    messages = pl.scan_parquet(weighted).select(pl.col("condition").fill_null(""), "items").with_row_index("row").explode("items").unnest("items")
    supervised = pl.col("weight") > 0
    table = messages.group_by("condition").agg(
        pl.col("row").n_unique().alias("conversations"),
        (pl.col("role") == "assistant").sum().alias("assistant_turns"),
        supervised.sum().alias("supervised_turns"),
        pl.when(supervised).then(pl.col("content").str.len_chars()).otherwise(0).sum().alias("supervised_chars"),
    ).collect(engine="streaming")
    stats = {}
    for row in table.sort("condition").to_dicts():
        condition = row.pop("condition")
        stats[condition] = ConditionStats(**{k: int(v) for k, v in row.items()}, weight=policy.weight_for(condition))
    return stats


def condition_table(report: WeightsReport | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for display (CLI table, Prefect artifact): one per condition, sorted by name."""
    data = report.to_json() if isinstance(report, WeightsReport) else report
    return [{"condition": c or "(none)", **s} for c, s in sorted(data["conditions"].items())]
