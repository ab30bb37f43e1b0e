"""`data:` settings: the sources of each split, validation limits and the mixing policy (beside the data stage)."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import Discriminator, Field, Tag, field_validator

from openchat_core.data.mix import MixPolicy
from openchat_core.data.rules import DEFAULT_MAX_LINE_BYTES
from openchat_core.data.sources import DataSource
from openchat_core.section import ConfigError, Section

# A source is a path (or glob) or a mapping; the discriminator keeps a mistake in a mapping from also
# being reported as "not a string".
SourceEntry = Annotated[Annotated[str, Tag("path")] | Annotated[DataSource, Tag("source")],
                        Discriminator(lambda v: "path" if isinstance(v, str) else "source")]


class DataConfig(Section):
    train: list[SourceEntry] = Field(description="training sources: paths/globs, or {path, format, condition, max_conversations, sample_fraction}")
    eval: list[SourceEntry] = Field(default_factory=list, description="held-out sources for eval loss (same forms as train)")
    max_rejected_fraction: float | None = Field(None, ge=0, le=1, description="fail validation above this rejected share")
    max_line_bytes: int = Field(DEFAULT_MAX_LINE_BYTES, gt=0, description="lines longer than this are rejected without being loaded")
    mix: MixPolicy = Field(default_factory=MixPolicy, description="dedup across sources, length filters, sampling seed")

    @field_validator("train")
    @classmethod
    def _train_not_empty(cls, value: list[str | DataSource]) -> list[str | DataSource]:
        if not value:
            raise ValueError("data.train is empty: list at least one JSONL file or glob")
        return value

    def resolve(self, paths: Sequence[str], base: Path) -> list[Path]:
        """Expand globs relative to the config's folder; each pattern must match at least one file."""
        found: list[Path] = []
        for pattern in paths:
            full = pattern if Path(pattern).is_absolute() else str(base / pattern)
            matches = sorted(Path(p) for p in glob.glob(full))
            if not matches:
                raise ConfigError(f"data path {pattern!r} matches no file (looked for {full})")
            found.extend(matches)
        return found

    @staticmethod
    def as_sources(entries: Sequence[str | DataSource]) -> list[DataSource]:
        """Every entry as a DataSource (a plain path is `{path: ...}`: format auto, no condition, no cap)."""
        return [DataSource(path=e) if isinstance(e, str) else e for e in entries]
