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
from openchat_core.models.checkpoint import is_complete_checkpoint, list_epoch_checkpoints, read_checkpoint
from openchat_core.training.launcher import TrainingFailed, run_training
from openchat_core.training.trainer_config import TrainerConfig
from storage import SUCCESS_MARKER, StorageLayout
from storage.layout import complete_children, download_folder
from tasks.common import publish_markdown
from tasks.tracking import TrackingContext

TRAIN_VERSION = "1"
RUN_ID_FILE = "mlflow_run.json"


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
    final = layout.stage_dir("train", key)  # where the epochs are published (the training folder itself for local roots)
    out = layout.work_dir("train", key)
    run_id_file = f"{final}/{RUN_ID_FILE}"
    if layout.is_complete(final):
        logger.info("train: reusing finished training %s", final)
        run_id = layout.read_json(run_id_file)["run_id"] if layout.exists(run_id_file) else None
        return _output(layout, key, final, cached=True, run_id=run_id)

    run_id = None
    if tracking is not None:
        run_id = layout.read_json(run_id_file)["run_id"] if layout.exists(run_id_file) else tracking.start_run("train", {"openchat.stage": "train"})
        layout.write_json(run_id_file, {"run_id": run_id})
    _check_model_source(cfg.model.base)
    if layout.remote:
        restore_published(final, out, logger)
    trainer_cfg = TrainerConfig(data=layout.local_file(tokens_file), eval_data=layout.local_file(eval_file) if eval_file else None,
                                out_dir=str(out), train=cfg.train, model=cfg.model, resume=True,
                                publish_to=final if layout.remote else None,
                                tracking_uri=tracking.uri if tracking else None, mlflow_run_id=run_id,
                                experiment=tracking.experiment if tracking else None)
    logger.info("train: %s -> %s", tokens_file, out)
    try:
        run_training(trainer_cfg, on_line=logger.info)
    except BaseException:
        if tracking is not None and run_id:
            tracking.client().set_terminated(run_id, status="FAILED")
        raise
    layout.write_json(f"{final}/{SUCCESS_MARKER}", {"stage": "train", "key": key})  # every epoch is published: the stage is complete
    if tracking is not None and run_id:
        tracking.client().set_terminated(run_id, status="FINISHED")
    result = _output(layout, key, final, cached=False, run_id=run_id)
    rows = [{"epoch": c.epoch, **{k: round(v, 4) for k, v in c.metrics.items()}, "checkpoint": c.path} for c in result.checkpoints]
    publish_markdown("training", f"## Training\n\n{markdown_table(rows)}\n\nOutput: `{final}`", description="Epoch checkpoints and held-out metrics")
    return result


def _check_model_source(base: str) -> None:
    """Fail before launching (and without retrying) when the base model cannot be found."""
    from openchat_core.models.model_factory import preset_of

    if preset_of(base) is None and not (Path(base).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"model.base {base!r} is not a local Hugging Face model folder (no config.json) or a preset:NAME")


def restore_published(final: str, out: Path, logger) -> None:  # noqa: ANN001 - a Prefect logger
    """Bring the published epochs and the newest published state into the local work folder, so a training that stopped
    on another machine (or lost its disk) resumes where the storage root says it stopped."""
    from openchat_core.training.state import MARKER, STATE_DIR, latest_resume_point

    for name in complete_children(final):
        if not is_complete_checkpoint(out / name):
            download_folder(f"{final}/{name}", out / name)
            logger.info("train: restored published %s", name)
    published = complete_children(f"{final}/{STATE_DIR}", marker=MARKER)
    local = latest_resume_point(out)
    if published and (local is None or published[-1] > local.tag):
        download_folder(f"{final}/{STATE_DIR}/{published[-1]}", out / STATE_DIR / published[-1], marker=MARKER)
        logger.info("train: resuming from the published state %s", published[-1])


def _output(layout: StorageLayout, key: str, final: str, cached: bool, run_id: str | None) -> TrainOutput:
    """The published epochs (read through a local copy when the root is remote); their paths are in the storage root."""
    names = complete_children(final) if layout.remote else [c.path.name for c in list_epoch_checkpoints(final)]
    checkpoints = [(f"{final}/{name}", read_checkpoint(layout.local_copy(f"{final}/{name}"))) for name in names]
    if not checkpoints:
        raise RuntimeError(f"training in {final} finished without a complete checkpoint")
    checkpoints.sort(key=lambda c: c[1].epoch if c[1].epoch is not None else -1)
    return TrainOutput(key=key, path=final, cached=cached, model_type=checkpoints[0][1].model_type, mlflow_run_id=run_id,
                       checkpoints=[EpochCheckpoint(epoch=c.epoch, path=path, metrics=c.metadata.get("metrics", {})) for path, c in checkpoints])
