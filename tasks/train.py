"""The train task: launch the DeepSpeed trainer as subprocesses, stream their log into the flow run log.

The output folder is content-addressed (data + model + training settings), so a finished training
is reused, and a run that failed or was killed resumes from its last complete state when the task
is retried or the flow is restarted (the trainer always starts with `resume=True`).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from pydantic import BaseModel

from openchat_core.config import PipelineConfig
from openchat_core.digest import text_digest
from openchat_core.markdown import markdown_table
from openchat_core.models.checkpoint import list_epoch_checkpoints
from openchat_core.training.launcher import TrainingFailed, run_training
from openchat_core.training.trainer_config import TrainerConfig
from storage import SUCCESS_MARKER, StorageLayout
from tasks.common import publish_markdown
from tasks.tracking import TrackingContext

TRAIN_VERSION = "1"


class EpochCheckpoint(BaseModel):
    epoch: int
    path: str
    metrics: dict[str, float]


class TrainOutput(BaseModel):
    key: str
    path: str
    cached: bool
    model_type: str
    checkpoints: list[EpochCheckpoint]
    mlflow_run_id: str | None = None


def train_key(tokens_key: str, eval_key: str | None, cfg: PipelineConfig) -> str:
    return text_digest("train", TRAIN_VERSION, tokens_key, eval_key or "-", cfg.model.model_dump_json(), cfg.train.model_dump_json())


def _retry_unless_bad_input(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry crashes (a retry resumes from the last state); not a missing model or bad settings."""
    try:
        state.result(raise_on_failure=True)
    except TrainingFailed as e:
        return e.retryable
    except (FileNotFoundError, ValueError):
        return False
    except BaseException:  # noqa: BLE001
        return True
    return False


@task(name="train", cache_policy=NONE, retries=1, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input)
def train_task(layout: StorageLayout, tokens_file: str, tokens_key: str, eval_file: str | None, eval_key: str | None,
               cfg: PipelineConfig, tracking: TrackingContext | None = None) -> TrainOutput:
    """Train (or resume, or reuse) the model for these tokens and settings; returns its epoch checkpoints."""
    logger = get_run_logger()
    key = train_key(tokens_key, eval_key, cfg)
    if layout.remote:
        raise NotImplementedError("training writes checkpoints locally; use a local storage.root on the training machine "
                                  "(checkpoints are then registered to MLflow's artifact store)")
    out = Path(layout.stage_dir("train", key))
    if (out / SUCCESS_MARKER).is_file():
        logger.info("train: reusing finished training %s", out)
        return _output(key, out, cached=True, run_id=(out / "mlflow_run_id").read_text().strip() if (out / "mlflow_run_id").is_file() else None)

    run_id = None
    if tracking is not None:
        existing = out / "mlflow_run_id"
        run_id = existing.read_text().strip() if existing.is_file() else tracking.start_run("train", {"openchat.stage": "train"})
        out.mkdir(parents=True, exist_ok=True)
        existing.write_text(run_id)
    _check_model_source(cfg.model.base)
    trainer_cfg = TrainerConfig(data=tokens_file, eval_data=eval_file, out_dir=str(out), train=cfg.train, model=cfg.model, resume=True,
                                tracking_uri=tracking.uri if tracking else None, mlflow_run_id=run_id,
                                experiment=tracking.experiment if tracking else None)
    logger.info("train: %s -> %s", tokens_file, out)
    try:
        run_training(trainer_cfg, on_line=logger.info)
    except BaseException:
        if tracking is not None and run_id:
            tracking.client().set_terminated(run_id, status="FAILED")
        raise
    (out / SUCCESS_MARKER).write_text("{}\n")
    if tracking is not None and run_id:
        tracking.client().set_terminated(run_id, status="FINISHED")
    result = _output(key, out, cached=False, run_id=run_id)
    rows = [{"epoch": c.epoch, **{k: round(v, 4) for k, v in c.metrics.items()}, "checkpoint": c.path} for c in result.checkpoints]
    publish_markdown("training", f"## Training\n\n{markdown_table(rows)}\n\nOutput: `{out}`", description="Epoch checkpoints and held-out metrics")
    return result


def _check_model_source(base: str) -> None:
    """Fail before launching (and without retrying) when the base model cannot be found."""
    from openchat_core.models.model_factory import preset_of

    if preset_of(base) is None and not (Path(base).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"model.base {base!r} is not a local Hugging Face model folder (no config.json) or a preset:NAME")


def _output(key: str, out: Path, cached: bool, run_id: str | None) -> TrainOutput:
    checkpoints = list_epoch_checkpoints(out)
    if not checkpoints:
        raise RuntimeError(f"training in {out} finished without a complete checkpoint")
    return TrainOutput(key=key, path=str(out), cached=cached, model_type=checkpoints[0].model_type, mlflow_run_id=run_id,
                       checkpoints=[EpochCheckpoint(epoch=c.epoch, path=str(c.path), metrics=c.metadata.get("metrics", {})) for c in checkpoints])
