"""What stages hand each other: the result types of the stage tasks and the storage layout of a config.

Kept free of Prefect so that commands and flows can import these types cheaply, and so that tasks can
type their arguments with them (flows import tasks, never the other way).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from openchat_core.config import PipelineConfig
from storage import StorageLayout


class StageOutput(BaseModel):
    """A completed stage: where its outputs are, its content key, whether it came from the cache, and its report."""

    stage: str
    key: str
    path: str
    cached: bool
    report: dict[str, Any]


class SplitOutputs(BaseModel):
    validated: StageOutput
    mixed: StageOutput
    weighted: StageOutput
    tokens: StageOutput

    @property
    def tokens_file(self) -> str:
        return f"{self.tokens.path}/tokens.parquet"


class DataOutputs(BaseModel):
    train: SplitOutputs
    eval: SplitOutputs | None = None

    @property
    def cached(self) -> bool:
        splits = [s for s in (self.train, self.eval) if s is not None]
        return all(o.cached for s in splits for o in (s.validated, s.mixed, s.weighted, s.tokens))

    @property
    def heldout_file(self) -> str | None:
        """The pretokenized held-out data that training and evaluation measure loss on (None without eval data)."""
        return self.eval.tokens_file if self.eval else None

    @property
    def heldout_key(self) -> str | None:
        """The held-out data's content key (part of the train and eval cache keys)."""
        return self.eval.tokens.key if self.eval else None


def layout_for(cfg: PipelineConfig) -> StorageLayout:
    """The config's storage layout: a URL root as given, a local root relative to the config file."""
    root = cfg.storage.root
    return StorageLayout(root if "://" in root else str(cfg.path(root)), cfg.name)
