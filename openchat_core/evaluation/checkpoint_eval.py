"""Evaluating one pipeline checkpoint as the config asks: generation evals and held-out loss, as flat metrics.

The evaluate stage's domain logic (its Prefect task only caches, logs and publishes): what makes
two evaluations comparable (`eval_key`, recorded on registered versions so promotion compares like
with like), the metrics a summary becomes, and the evaluation itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.digest import file_digest, text_digest

if TYPE_CHECKING:  # the pipeline config assembles the components' settings; components never import it
    from openchat_core.config import PipelineConfig


def eval_key(cfg: PipelineConfig, heldout_key: str | None) -> str:
    """What makes two evaluations comparable: the eval sets' content, condition, system prompt, length, held-out data."""
    gen, coding = "-", []
    if cfg.eval.eval_data:
        from openchat_core.evaluation.eval_data import load_eval_data
        from openchat_core.evaluation.task_types import get_task_type

        data = load_eval_data(cfg.path(cfg.eval.eval_data), cfg.eval.eval_sets, limit_per_task=cfg.eval.limit_per_task)
        gen = data.digest
        if any(get_task_type(t.task_type).executes_code for t in data.tasks):
            coding = [json.dumps(cfg.coding_options().describe(), sort_keys=True)]  # sandbox limits can change verdicts
    return text_digest("eval", gen, cfg.eval.condition, str(cfg.eval.max_new_tokens), heldout_key or "-", *coding,
                       _harness_key(cfg))


def _harness_key(cfg: PipelineConfig) -> str:
    """lm-eval tasks, model, limit and the content of the local task files (a changed task is another evaluation)."""
    if not cfg.eval.harness:
        return "-"
    include = cfg.path(cfg.eval.harness_include) if cfg.eval.harness_include else None
    files = sorted(f for f in include.rglob("*") if f.is_file() and "__pycache__" not in f.parts) if include else []
    return text_digest(",".join(cfg.eval.harness), cfg.eval.harness_model, str(cfg.eval.harness_limit),
                       *(file_digest(f) for f in files))


def summary_metrics(summary: Any) -> dict[str, float]:
    """An EvalSummary as flat MLflow metrics: gen/accuracy, gen/unmatched, gen/<task type>/accuracy, and for coding
    tasks gen/<task type>/pass1_base and pass1_plus (pass@1 over the type's problems; plus only when every problem has it)."""
    from openchat_core.evaluation.summary import coding_type_scores

    metrics = {"gen/accuracy": summary.overall.accuracy, "gen/unmatched": summary.overall.unmatched_rate}
    for name, score in summary.task_types.items():
        metrics[f"gen/{name}/accuracy"] = score.accuracy
    for task_type, score in coding_type_scores(summary).items():
        metrics.update({f"gen/{task_type}/{k}": v for k, v in score.items() if v is not None})
    return metrics


def evaluate_checkpoint(checkpoint: str, cfg: PipelineConfig, out_dir: Path, heldout_file: str | None,
                        recorded: dict[str, float] | None = None) -> dict[str, float]:
    """Generation evals and lm-eval tasks (if configured) + held-out loss (recorded by the trainer, or measured now)."""
    from openchat_core.evaluation.heldout import heldout_metrics
    from openchat_core.evaluation.runner import run_generation_eval

    metrics: dict[str, float] = {}
    if cfg.eval.eval_data:
        result = run_generation_eval(checkpoint, cfg.path(cfg.eval.eval_data), cfg.eval.eval_sets, out_dir=out_dir,
                                     condition=cfg.eval.condition, engine=cfg.eval.engine, max_new_tokens=cfg.eval.max_new_tokens,
                                     limit_per_task=cfg.eval.limit_per_task, coding=cfg.coding_options())
        metrics.update(summary_metrics(result.summary))
    if cfg.eval.harness:
        from openchat_core.evaluation.harness import evaluate_served

        include = [cfg.path(cfg.eval.harness_include)] if cfg.eval.harness_include else []
        harness = evaluate_served(checkpoint, cfg.eval.harness, out_dir / "harness", model=cfg.eval.harness_model,
                                  include_paths=include, limit=cfg.eval.harness_limit, engine=cfg.eval.engine)
        metrics.update(harness.metrics)
    if recorded and "eval/loss" in recorded:
        metrics.update({k: v for k, v in recorded.items() if k.startswith("eval/")})
    elif heldout_file:
        metrics.update(heldout_metrics(checkpoint, heldout_file, cfg.train.batch_max_len))
    return metrics
