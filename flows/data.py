"""The data stage flow: validate -> assign C-RLFT weights -> pretokenize, for the train and eval splits.

Run alone: `openchat data configs/demo.yaml` or as the `data` deployment; the pipeline flow runs it
as its first stage. Every task is content-addressed, so a re-run with unchanged inputs only reads
what earlier runs built.
"""

from __future__ import annotations

from pydantic import BaseModel
from prefect import flow

from openchat_core.config import PipelineConfig, load_config
from storage import StorageLayout
from tasks.common import StageOutput
from tasks.data import pretokenize_task, validate_task, weights_task


class SplitOutputs(BaseModel):
    validated: StageOutput
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
        return all(o.cached for s in splits for o in (s.validated, s.weighted, s.tokens))


def layout_for(cfg: PipelineConfig) -> StorageLayout:
    root = cfg.storage.root
    return StorageLayout(root if "://" in root else str(cfg.path(root)), cfg.name)


def run_data_stages(cfg: PipelineConfig) -> DataOutputs:
    """The data stages as tasks of the calling flow (used by this flow and by the pipeline flow)."""
    layout = layout_for(cfg)
    base = cfg.path(".")

    def split(name: str, patterns: list[str], max_rejected: float | None) -> SplitOutputs:
        inputs = [str(p) for p in cfg.data.resolve(patterns, base)]
        validated = validate_task(layout, inputs, name, max_rejected, cfg.data.max_line_bytes)
        weighted = weights_task(layout, validated, cfg.weights, name)
        tokens = pretokenize_task(layout, weighted, cfg.tokenize.model_type, cfg.tokenizer_source, name,
                                  cfg.tokenize.per_sequence_loss, cfg.tokenize.workers, cfg.tokenize.batch_rows,
                                  cfg.tokenize.chat_template_options())
        return SplitOutputs(validated=validated, weighted=weighted, tokens=tokens)

    train = split("train", cfg.data.train, cfg.data.max_rejected_fraction)
    held_out = split("eval", cfg.data.eval, None) if cfg.data.eval else None
    return DataOutputs(train=train, eval=held_out)


@flow(name="openchat-data", log_prints=True)
def data_flow(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None) -> DataOutputs:
    """Validate, weight and pretokenize the config's train and eval data (each step cached by content)."""
    return run_data_stages(load_config(config_path, overrides or []))
