"""Evaluating one pipeline checkpoint as the config asks: generation evals and held-out loss, as flat metrics.

The evaluate stage's domain logic (its Prefect task only caches, logs and publishes): what makes
two evaluations comparable (`eval_key`, recorded on registered versions so promotion compares like
with like), the metrics a summary becomes, and the evaluation itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openchat_core.config import PipelineConfig
from openchat_core.digest import text_digest


def eval_key(cfg: PipelineConfig, heldout_key: str | None) -> str:
    """What makes two evaluations comparable: the eval sets' content, condition, system prompt, length, held-out data."""
    gen = "-"
    if cfg.eval.eval_data:
        from openchat_core.evaluation.eval_data import load_eval_data

        gen = load_eval_data(cfg.path(cfg.eval.eval_data), cfg.eval.eval_sets, limit_per_task=cfg.eval.limit_per_task).digest
    return text_digest("eval", gen, cfg.eval.condition, str(cfg.eval.max_new_tokens), heldout_key or "-")


def summary_metrics(summary: Any) -> dict[str, float]:
    """An EvalSummary as flat MLflow metrics: gen/accuracy, gen/unmatched, gen/<task type>/accuracy."""
    metrics = {"gen/accuracy": summary.overall.accuracy, "gen/unmatched": summary.overall.unmatched_rate}
    for name, score in summary.task_types.items():
        metrics[f"gen/{name}/accuracy"] = score.accuracy
    return metrics


def evaluate_checkpoint(checkpoint: str, cfg: PipelineConfig, out_dir: Path, heldout_file: str | None,
                        recorded: dict[str, float] | None = None) -> dict[str, float]:
    """Generation evals (if configured) + held-out loss (recorded by the trainer, or measured now)."""
    from openchat_core.evaluation.heldout import heldout_metrics
    from openchat_core.evaluation.runner import run_generation_eval

    metrics: dict[str, float] = {}
    if cfg.eval.eval_data:
        result = run_generation_eval(checkpoint, cfg.path(cfg.eval.eval_data), cfg.eval.eval_sets, out_dir=out_dir,
                                     condition=cfg.eval.condition, engine=cfg.eval.engine, max_new_tokens=cfg.eval.max_new_tokens,
                                     limit_per_task=cfg.eval.limit_per_task)
        metrics.update(summary_metrics(result.summary))
    if recorded and "eval/loss" in recorded:
        metrics.update({k: v for k, v in recorded.items() if k.startswith("eval/")})
    elif heldout_file:
        metrics.update(heldout_metrics(checkpoint, heldout_file, cfg.train.batch_max_len))
    return metrics
