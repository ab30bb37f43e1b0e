"""The evaluate-and-promote stage flow: evaluate every epoch, select the best, register it, decide champion/challenger.

Runs alone on the config's training output (cached stages), on checkpoint folders you pass, or on
a registered version (`model_uri`, e.g. models:/NAME/3), which is then evaluated and compared with
the champion.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.data import run_data_stages
from openchat_core.config import PipelineConfig, load_config
from openchat_core.evaluation.checkpoint_eval import eval_key
from openchat_core.models.checkpoint import read_checkpoint
from tasks.evaluate import EpochEval, Registration, evaluate_epoch_task, promote_task, publish_epoch_table, register_best_task
from tasks.outputs import layout_for
from tasks.tracking import TrackingContext, flow_run, prefect_tags
from tasks.train import EpochCheckpoint, TrainOutput


class PromotionOutput(BaseModel):
    evals: list[EpochEval]
    registration: Registration
    decision: dict


def evaluate_epochs(cfg: PipelineConfig, tracking: TrackingContext, checkpoints: list[EpochCheckpoint], heldout_file: str | None,
                    key: str, train_run_id: str | None, recorded_heldout: bool) -> list[EpochEval]:
    """Evaluate each epoch; a failed epoch is reported (failed task run + table row), the others still count."""
    layout = layout_for(cfg)
    evals = []
    for ckpt in checkpoints:
        state = evaluate_epoch_task(layout, ckpt, cfg, key, heldout_file, tracking, train_run_id, recorded_heldout, return_state=True)
        if state.is_completed():
            evals.append(state.result())
        else:
            message = str(state.message or state.name)
            get_run_logger().error("evaluation of epoch %s failed: %s", ckpt.epoch, message)
            evals.append(EpochEval(epoch=ckpt.epoch, checkpoint=ckpt.path, metrics={}, error=message))
    publish_epoch_table(evals, cfg.eval.primary_metric)
    return evals


def run_evaluate_and_promote(cfg: PipelineConfig, tracking: TrackingContext, train: TrainOutput, heldout_file: str | None,
                             heldout_key: str | None, data_digest: str, recorded_heldout: bool = True) -> PromotionOutput:
    key = eval_key(cfg, heldout_key)
    evals = evaluate_epochs(cfg, tracking, train.checkpoints, heldout_file, key, train.mlflow_run_id, recorded_heldout)
    if all(e.error for e in evals):
        raise RuntimeError("every epoch's evaluation failed; nothing to register (see the epoch-metrics artifact)")
    registration = register_best_task(cfg, evals, key, tracking, train.model_type, data_digest, train.mlflow_run_id, tracking.parent_run_id,
                                      layout_for(cfg))
    decision = promote_task(cfg, registration, key, tracking, heldout_file, layout_for(cfg))
    return PromotionOutput(evals=evals, registration=registration, decision=decision)


def _external_checkpoints(paths: list[str]) -> TrainOutput:
    infos = [read_checkpoint(p) for p in paths]
    ckpts = [EpochCheckpoint(epoch=i.epoch if i.epoch is not None else n, path=str(i.path), metrics={}) for n, i in enumerate(infos)]
    return TrainOutput(key="external", path=str(Path(paths[0]).parent), cached=True, model_type=infos[0].model_type, checkpoints=ckpts)


@flow(name="openchat-evaluate-and-promote", log_prints=True)
def evaluate_and_promote_flow(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None,
                              checkpoints: list[str] | None = None, model_uri: str | None = None) -> PromotionOutput:
    """Evaluate and promote: the config's trained epochs, the given checkpoint folders, or a registered version."""
    from flows.train import run_train_stage
    from openchat_core.registry.store import resolve_model_dir

    cfg = load_config(config_path, overrides or [])
    layout = layout_for(cfg)
    with flow_run(TrackingContext.for_config(cfg, layout), "evaluate-and-promote", prefect_tags()) as tracking:
        data = run_data_stages(cfg)
        if model_uri:
            train = _external_checkpoints([str(resolve_model_dir(model_uri, tracking.uri))])
            recorded = False
        elif checkpoints:
            train, recorded = _external_checkpoints(checkpoints), False
        else:
            train, recorded = run_train_stage(cfg, tracking), True
        return run_evaluate_and_promote(cfg, tracking, train, data.heldout_file, data.heldout_key, data.train.tokens.key, recorded)
