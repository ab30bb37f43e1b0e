"""The train stage flow: data stages (cached) -> multipack DeepSpeed training, tracked in MLflow.

Run alone on a config (`openchat run configs/demo.yaml --only train`), or on an existing pretokenized
dataset by passing `tokens_path` (and optionally `eval_tokens_path`).
"""

from __future__ import annotations

from prefect import flow

from flows.data import run_data_stages
from openchat_core.config import PipelineConfig, load_config
from openchat_core.digest import file_digest
from tasks.outputs import layout_for
from tasks.tracking import TrackingContext, flow_run
from tasks.train import TrainOutput, train_task


def run_train_stage(cfg: PipelineConfig, tracking: TrackingContext, tokens_path: str | None = None,
                    eval_tokens_path: str | None = None) -> TrainOutput:
    layout = layout_for(cfg)
    if tokens_path:
        tokens_file, tokens_key = tokens_path, file_digest(tokens_path)
        eval_file, eval_key = eval_tokens_path, file_digest(eval_tokens_path) if eval_tokens_path else None
    else:
        data = run_data_stages(cfg)
        tokens_file, tokens_key = data.train.tokens_file, data.train.tokens.key
        eval_file, eval_key = data.heldout_file, data.heldout_key
    return train_task(layout, tokens_file, tokens_key, eval_file, eval_key, cfg, tracking)


@flow(name="openchat-train", log_prints=True)
def train_flow(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None, tokens_path: str | None = None,
               eval_tokens_path: str | None = None) -> TrainOutput:
    """Train the config's model; with `tokens_path`, on that pretokenized Parquet instead of the config's data."""
    cfg = load_config(config_path, overrides or [])
    layout = layout_for(cfg)
    with flow_run(TrackingContext.for_config(cfg, layout), "train-flow") as tracking:
        return run_train_stage(cfg, tracking, tokens_path, eval_tokens_path)
