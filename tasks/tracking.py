"""MLflow context for stage tasks: which store, which experiment, and the parent run to nest under.

One experiment per pipeline; one parent run per pipeline (or standalone stage) flow run, with a
nested run per stage. The Prefect flow run and the MLflow run link to each other through tags.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from openchat_core.config import PipelineConfig
from storage import StorageLayout


class TrackingContext(BaseModel):
    uri: str
    experiment: str
    artifact_location: str | None = None
    parent_run_id: str | None = None

    @classmethod
    def for_config(cls, cfg: PipelineConfig, layout: StorageLayout) -> TrackingContext:
        uri = cfg.tracking.uri or layout.mlflow_tracking_uri()
        return cls(uri=uri, experiment=cfg.tracking.experiment or cfg.name,
                   artifact_location=None if cfg.tracking.uri else layout.mlflow_artifact_root())

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self) -> str:
        from openchat_core.tracking import ensure_experiment

        return ensure_experiment(self.client(), self.experiment, self.artifact_location)

    def start_run(self, name: str, tags: dict[str, Any] | None = None) -> str:
        """Create a run (nested under `parent_run_id` when set) tagged with the current Prefect flow run."""
        all_tags = {**prefect_tags(), **(tags or {})}
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client().create_run(self.experiment_id(), run_name=name, tags={k: str(v) for k, v in all_tags.items()})
        return run.info.run_id

    def nested(self, parent_run_id: str) -> TrackingContext:
        return self.model_copy(update={"parent_run_id": parent_run_id})

    def run_url(self, run_id: str) -> str | None:
        """A UI link when the store is a tracking server; None for file/sqlite stores (open them with `openchat up`)."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"
        return None


def prefect_tags() -> dict[str, str]:
    """Tags that link an MLflow run back to the Prefect flow run (and its UI page) that made it."""
    try:
        from prefect.context import get_run_context
        from prefect.settings import PREFECT_UI_URL

        ctx = get_run_context()
    except Exception:  # noqa: BLE001 - outside a Prefect run
        return {}
    flow_run = getattr(ctx, "flow_run", None) or getattr(getattr(ctx, "task_run", None), "flow_run_id", None)
    run_id = str(getattr(flow_run, "id", flow_run)) if flow_run else None
    if not run_id:
        return {}
    tags = {"prefect.flow_run_id": run_id}
    if getattr(flow_run, "name", None):
        tags["prefect.flow_run_name"] = flow_run.name
    ui = PREFECT_UI_URL.value()
    if ui:
        tags["prefect.flow_run_url"] = f"{ui.rstrip('/')}/runs/flow-run/{run_id}"
    return tags


class _ParentRun:
    """A flow-level MLflow run: created on entry, ended FINISHED/FAILED on exit; stage runs nest under it."""

    def __init__(self, tracking: TrackingContext, name: str, tags: dict[str, Any] | None = None) -> None:
        self.base, self.name, self.tags = tracking, name, tags or {}
        self.run_id: str | None = None

    def __enter__(self) -> TrackingContext:
        self.run_id = self.base.start_run(self.name, {"openchat.flow": self.name, **self.tags})
        return self.base.nested(self.run_id)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id:
            self.base.client().set_terminated(self.run_id, status="FAILED" if exc_type else "FINISHED")


def flow_run(tracking: TrackingContext, name: str, tags: dict[str, Any] | None = None) -> _ParentRun:
    return _ParentRun(tracking, name, tags)
