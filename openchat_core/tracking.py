"""Experiment tracking behind one small protocol: MLflow when configured, a no-op otherwise.

Stage code logs through `Tracker`, never through `mlflow.*` directly, so it runs unchanged with
tracking off, in tests, and on non-zero ranks (which get a `NullTracker`). Metrics are buffered and
sent with `log_batch`: one sqlite round trip per flush instead of one per value.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def local_tracking_uri(folder: str | Path) -> str:
    """The MLflow store kept in a local folder: `sqlite:///<folder>/mlflow.db` (tracking and registry in one file)."""
    return f"sqlite:///{folder}/mlflow.db"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a sqlite store (`<db folder>/mlartifacts`), not in `./mlruns` of whatever the working directory is."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it (with that artifact location) if it does not exist yet."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - created concurrently
        return client.get_experiment_by_name(name).experiment_id


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class MlflowTracker:
    """Logs to one MLflow run (an existing `run_id`, or a new run, optionally nested under `parent_run_id`)."""

    def __init__(self, tracking_uri: str, *, run_id: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None, flush_every_s: float = 5.0) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        if run_id is None:
            exp_id = ensure_experiment(self.client, experiment or "Default", default_artifact_location(tracking_uri))
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._flush_every_s = flush_every_s

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._pending) >= 900 or time.monotonic() - self._last_flush > self._flush_every_s:
            self.flush()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def log_dataset(self, path: Path | str, name: str, digest: str, context: str, tags: Mapping[str, str] | None = None) -> None:
        """Record a data file as this run's input (MLflow dataset lineage: source URI, name, content digest)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        uri = str(path) if "://" in str(path) else Path(path).resolve().as_uri()  # object storage URLs as they are
        dataset = MetaDataset(source=resolve_dataset_source(uri), name=name, digest=digest)
        input_tags = [InputTag(key=k, value=v) for k, v in (tags or {}).items()] + [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
        # what mlflow.log_input sends, without its global "active run" state
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=input_tags)])

    def log_table(self, data: Mapping[str, list[Any]], artifact_file: str) -> None:
        """A column -> values table as a JSON artifact that MLflow's UI shows as a table."""
        self.client.log_table(self.run_id, dict(data), artifact_file)

    def flush(self) -> None:
        if self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
