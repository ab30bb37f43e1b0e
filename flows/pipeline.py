"""`openchat-pipeline`: validate -> weights -> pretokenize -> train (per-epoch eval) -> select -> register/promote -> deploy.

One MLflow parent run per flow run, with a nested run per stage; the MLflow run carries the Prefect
flow run's id and URL, and the Prefect flow run is tagged with the MLflow run id. Every stage is
content-addressed, so an unchanged re-run only reads what earlier runs built, and a run restarted
after a failure continues from the stages (and training epochs) that completed.

`skip_if_unchanged=True` (the scheduled deployment) returns at once when the input data and the
config are the same as in the last successful run.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.data import run_data_stages
from flows.evaluate import PromotionOutput, run_evaluate_and_promote
from openchat_core.config import PipelineConfig, load_config
from openchat_core.digest import text_digest
from openchat_core.markdown import markdown_table
from tasks.common import publish_markdown
from tasks.data import track_data_task
from tasks.deploy import deploy_task
from tasks.outputs import DataOutputs, layout_for
from tasks.tracking import TrackingContext, flow_run, prefect_tags
from tasks.train import TrainOutput, train_task

LAST_SUCCESS = "last_success.json"


class PipelineSummary(BaseModel):
    pipeline: str
    skipped: bool = False
    data: dict[str, Any] = {}
    epochs: list[dict[str, Any]] = []
    registration: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    deployment: dict[str, Any] | None = None
    mlflow: dict[str, Any] = {}
    cached_stages: list[str] = []

    def markdown(self) -> str:
        if self.skipped:
            return f"## {self.pipeline}: nothing to do\n\nThe input data and config are unchanged since the last successful run."
        parts = [f"## {self.pipeline}", "### Data", markdown_table([self.data]) if self.data else "", "### Epochs", markdown_table(self.epochs)]
        if self.registration:
            parts += ["### Registry", f"Registered **v{self.registration['version']}** (epoch {self.registration['epoch']}, "
                                      f"{self.registration['metric']}={self.registration['value']:.4g}): {self.registration['reason']}"]
        if self.decision:
            parts += [f"Decision: **{self.decision['action']}**, {self.decision['reason']}"]
        if self.deployment:
            shown = ("served_name", "registry_version", "openai_base_url", "engine", "pid")
            parts += ["### Serving", markdown_table([{k: self.deployment.get(k) for k in shown}])]
        parts += ["### Tracking", markdown_table([self.mlflow])]
        return "\n\n".join(p for p in parts if p)


def _data_summary(data: DataOutputs) -> dict[str, Any]:
    v, t = data.train.validated.report, data.train.tokens.report["counts"]
    return {"lines": v["lines"], "valid": v["valid"], "quarantined": v["rejected"], "blank": v["blank"], "rows": t["rows"],
            "tokens": t["tokens"], "supervised tokens": t["supervised_tokens"]}


def _run_key(cfg: PipelineConfig, data: DataOutputs) -> str:
    config = cfg.model_dump(exclude={"base_dir"})
    return text_digest(data.train.validated.key, data.eval.validated.key if data.eval else "-", json.dumps(config, sort_keys=True, default=str))


def _tag_flow_run_with_mlflow(run_id: str, tracking: TrackingContext) -> None:
    """Link the Prefect flow run to its MLflow run (a tag, and a link artifact when MLflow has a UI URL)."""
    from prefect.artifacts import create_link_artifact
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context

    flow_run = get_run_context().flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=[*flow_run.tags, f"mlflow-run:{run_id}"])
    url = tracking.run_url(run_id)
    if url:
        create_link_artifact(link=url, link_text=f"MLflow run {run_id}", key="mlflow-run")


def run_pipeline(cfg: PipelineConfig, *, deploy: bool | None = None, skip_if_unchanged: bool = False) -> PipelineSummary:
    logger = get_run_logger()
    layout = layout_for(cfg)
    base = TrackingContext.for_config(cfg, layout)
    data = run_data_stages(cfg)
    key = _run_key(cfg, data)
    last = f"{layout.run_dir('state')}/{LAST_SUCCESS}"
    if skip_if_unchanged and layout.exists(last) and layout.read_json(last).get("key") == key:
        logger.info("input data and config unchanged since the last successful run: nothing to do")
        summary = PipelineSummary(pipeline=cfg.name, skipped=True)
        publish_markdown("pipeline-summary", summary.markdown(), "What this pipeline run did")
        return summary

    with flow_run(base, "pipeline", prefect_tags()) as tracking:
        _tag_flow_run_with_mlflow(tracking.parent_run_id, tracking)
        track_data_task(tracking, data, cfg, layout)
        train: TrainOutput = train_task(layout, data.train.tokens_file, data.train.tokens.key, data.heldout_file, data.heldout_key, cfg,
                                        tracking)
        promotion: PromotionOutput = run_evaluate_and_promote(cfg, tracking, train, data.heldout_file, data.heldout_key,
                                                              data.train.tokens.key)
        deployment = None
        if deploy if deploy is not None else cfg.serve.enabled:
            deployment = deploy_task(cfg, tracking, layout)
        cached = [f"{s}:{o.stage}" for s, split in (("train", data.train), ("eval", data.eval)) if split
                  for o in (split.validated, split.mixed, split.weighted, split.tokens) if o.cached] + (["train"] if train.cached else [])
        summary = PipelineSummary(
            pipeline=cfg.name, data=_data_summary(data),
            epochs=[{"epoch": e.epoch, **{k: round(v, 4) for k, v in sorted(e.metrics.items()) if k.count("/") < 2}, "error": e.error or ""}
                    for e in promotion.evals],
            registration=promotion.registration.model_dump(), decision=promotion.decision, deployment=deployment,
            mlflow={"tracking uri": tracking.uri, "experiment": tracking.experiment, "parent run": tracking.parent_run_id,
                    "registered model": cfg.registered_model_name}, cached_stages=cached)
    layout.write_json(last, {"key": key, "version": promotion.registration.version})
    publish_markdown("pipeline-summary", summary.markdown(), "What this pipeline run did")
    return summary


@flow(name="openchat-pipeline", log_prints=True)
def pipeline_flow(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None, deploy: bool | None = None,
                  skip_if_unchanged: bool = False) -> PipelineSummary:
    """The whole pipeline for one config. `deploy` overrides serve.enabled; `skip_if_unchanged` for schedules."""
    return run_pipeline(load_config(config_path, overrides or []), deploy=deploy, skip_if_unchanged=skip_if_unchanged)
