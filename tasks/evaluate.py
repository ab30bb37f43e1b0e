"""Evaluation and promotion tasks: per-epoch evals, best-epoch registration, champion/challenger decision.

Per-epoch results are content-addressed (checkpoint + evaluation settings), logged to MLflow at
step = epoch in the training run, and published as one epochs x metrics table. The registered
version carries tags saying what it is and how it was measured; the decision is published as an
artifact a person can read: candidate vs champion, metric, margin, outcome, reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from pydantic import BaseModel

from openchat_core.config import PipelineConfig
from openchat_core.digest import file_digest, git_revision, text_digest
from openchat_core.evaluation.checkpoint_eval import evaluate_checkpoint
from openchat_core.evaluation.harness import HARNESS_PREFIX
from openchat_core.markdown import markdown_table
from openchat_core.models.checkpoint import weights_file
from openchat_core.registry.adapters import registrable
from openchat_core.registry.promotion import promote_candidate
from openchat_core.registry.selection import EpochScore, select_best
from openchat_core.registry.store import ModelRegistry
from storage import StorageLayout
from tasks.common import publish_markdown, publish_table, retry_on_io_errors
from tasks.tracking import TrackingContext
from tasks.train import EpochCheckpoint

EVALUATE_VERSION = "1"
WEIGHTS_TAG = "openchat.weights_digest"


class EpochEval(BaseModel):
    epoch: int
    checkpoint: str
    metrics: dict[str, float]
    results_dir: str | None = None
    error: str | None = None


class Registration(BaseModel):
    version: str
    epoch: int
    checkpoint: str
    metric: str
    value: float
    reason: str
    harness: dict[str, float] = {}  # the candidate's lm-eval scores (eval.harness), shown in the decision


@task(name="evaluate-epoch", cache_policy=NONE, task_run_name="evaluate-epoch-{checkpoint.epoch}")
def evaluate_epoch_task(layout: StorageLayout, checkpoint: EpochCheckpoint, cfg: PipelineConfig, key: str, heldout_file: str | None,
                        tracking: TrackingContext | None = None, train_run_id: str | None = None, recorded_heldout: bool = True) -> EpochEval:
    """Evaluate one epoch's checkpoint; its metrics go to the training run at step = epoch."""
    logger = get_run_logger()
    local_checkpoint = layout.local_copy(checkpoint.path)  # read from the storage root (another worker may have trained it)
    stage_key = text_digest("evaluate", EVALUATE_VERSION, file_digest(weights_file(local_checkpoint)), key)
    final_url = layout.stage_dir("evaluate", stage_key)
    if not layout.is_complete(final_url):
        with layout.building("evaluate", stage_key) as out:
            metrics = evaluate_checkpoint(str(local_checkpoint), cfg, out, layout.local_file(heldout_file) if heldout_file else None,
                                          checkpoint.metrics if recorded_heldout else None)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    else:
        logger.info("epoch %s: reusing evaluation %s", checkpoint.epoch, final_url)
    final = layout.local_copy(final_url)
    metrics = json.loads((final / "metrics.json").read_text())
    logger.info("epoch %s: %s", checkpoint.epoch, ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    if tracking is not None and train_run_id:
        from openchat_core.tracking import MlflowTracker

        tracker = MlflowTracker(tracking.uri, run_id=train_run_id)
        tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith(("gen/", f"{HARNESS_PREFIX}/"))},
                            step=checkpoint.epoch)
        tracker.flush()
        if (final / "summary.json").is_file():
            tracker.log_artifact(str(final / "summary.json"), f"eval/ep_{checkpoint.epoch}")
    return EpochEval(epoch=checkpoint.epoch, checkpoint=checkpoint.path, metrics=metrics,
                     results_dir=str(final) if (final / "summary.json").is_file() else None)


def publish_epoch_table(evals: list[EpochEval], primary: str) -> None:
    rows = []
    for e in sorted(evals, key=lambda e: e.epoch):
        row: dict[str, Any] = {"epoch": e.epoch, "status": "failed" if e.error else "ok"}
        row.update({k: round(v, 4) for k, v in sorted(e.metrics.items()) if k.count("/") < 2 or k == primary})
        if e.error:
            row["error"] = e.error[:200]
        rows.append(row)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("epoch", "status"), k == "error", k))
    publish_table("epoch-metrics", [{c: r.get(c) for c in columns} for r in rows], description=f"Per-epoch metrics (primary: {primary})")


# registry reads that fail transiently (RegistryUnavailable is a ConnectionError) are retried; both tasks are idempotent
# (the same weights are found by their digest; a candidate already champion is "unchanged")
@task(name="register-best", cache_policy=NONE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io_errors)
def register_best_task(cfg: PipelineConfig, evals: list[EpochEval], key: str, tracking: TrackingContext, model_type: str,
                       data_digest: str, train_run_id: str | None, pipeline_run_id: str | None, layout: StorageLayout) -> Registration:
    """Pick the best epoch by the primary metric and register it as a new model version with its tags."""
    from openchat_core.registry.promotion import metric_tags
    from tasks.tracking import prefect_tags

    logger = get_run_logger()
    ok = [e for e in evals if not e.error]
    selection = select_best([EpochScore(e.epoch, e.metrics) for e in ok], cfg.eval.primary_metric, cfg.eval.direction, cfg.eval.tie_break)
    best = next(e for e in ok if e.epoch == selection.epoch)
    registry = ModelRegistry(tracking.uri, cfg.registered_model_name)
    tags = {"openchat.epoch": best.epoch, "openchat.primary_metric": cfg.eval.primary_metric, "openchat.data_digest": data_digest,
            "openchat.model_type": model_type, "openchat.git_revision": git_revision(), "openchat.selection": selection.reason,
            "openchat.pipeline_run_id": pipeline_run_id or "-", "openchat.train_run_id": train_run_id or "-",
            **prefect_tags(), **metric_tags(best.metrics, key)}
    local_checkpoint = layout.local_copy(best.checkpoint)  # the published epoch, from the storage root
    target = registrable(local_checkpoint, merge_adapter_weights=cfg.registry.merge_adapter)  # LoRA: adapter + base lineage, or merged
    tags |= target.tags
    weights_digest = file_digest(target.weights_file)
    version = registry.find_by_tag(WEIGHTS_TAG, weights_digest)
    if version is not None:  # an unchanged re-run: the same weights are already registered
        logger.info("these weights are already %s v%s; not registering them again", registry.name, version.version)
    else:
        version = registry.register(target.checkpoint, train_run_id, {**tags, WEIGHTS_TAG: weights_digest})
        logger.info("registered %s v%s: %s", registry.name, version.version, selection.reason)
    return Registration(version=version.version, epoch=best.epoch, checkpoint=best.checkpoint, metric=cfg.eval.primary_metric,
                        value=selection.value, reason=selection.reason,
                        harness={k: v for k, v in best.metrics.items() if k.startswith(f"{HARNESS_PREFIX}/")})


@task(name="promote", cache_policy=NONE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io_errors)
def promote_task(cfg: PipelineConfig, registration: Registration, key: str, tracking: TrackingContext, heldout_file: str | None,
                 layout: StorageLayout) -> dict[str, Any]:
    """Compare the new version with the champion (re-evaluating the champion if needed) and move the aliases."""
    logger = get_run_logger()
    registry = ModelRegistry(tracking.uri, cfg.registered_model_name)

    def evaluate_champion(path: Path) -> dict[str, float]:
        logger.info("champion's recorded result is not comparable: evaluating it on this evaluation (%s)", path)
        out = layout.work_dir("champion-reeval", text_digest(str(path), key))
        return evaluate_checkpoint(str(path), cfg, out, layout.local_file(heldout_file) if heldout_file else None)

    decision = promote_candidate(registry, registry.version(registration.version), cfg.eval.primary_metric, cfg.eval.direction,
                                 cfg.registry.promotion_margin, key, evaluate_champion)
    logger.info("%s: %s", decision.action, decision.reason)
    row = {"candidate": f"v{decision.candidate}", "champion before": f"v{decision.champion_before}" if decision.champion_before else "-",
           "metric": decision.metric, "candidate value": decision.candidate_value, "champion value": decision.champion_value,
           "margin": decision.margin, "outcome": decision.action, "champion now": f"v{decision.champion_after}"}
    harness = ""
    if registration.harness:
        rows = [{"lm-eval metric": k.removeprefix(f"{HARNESS_PREFIX}/"), "candidate": round(v, 4)}
                for k, v in sorted(registration.harness.items())]
        harness = f"\n\n### lm-eval scores of the candidate\n\n{markdown_table(rows)}"
    publish_markdown("promotion-decision", f"## Promotion decision: **{decision.action}**\n\n{markdown_table([row])}\n\n{decision.reason}"
                     + ("\n\n(The champion was re-evaluated on this evaluation.)" if decision.champion_reevaluated else "")
                     + harness, description=f"{registry.name}: candidate vs champion")
    return {**decision.to_dict(), "harness": registration.harness}
