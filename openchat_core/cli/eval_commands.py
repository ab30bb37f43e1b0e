"""Evaluation and registry commands: eval, eval-view, models, promote, rollback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from openchat_core.cli.options import config_options
from openchat_core.cli.output import fail
from openchat_core.config import StorageConfig
from openchat_core.evaluation.settings import EvalConfig
from openchat_core.markdown import markdown_table
from openchat_core.tracking import local_tracking_uri

DEFAULT_MLFLOW = local_tracking_uri(StorageConfig.model_fields["root"].default.removeprefix("./"))  # the pipeline's default store
MlflowUri = Annotated[str | None, typer.Option("--mlflow-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_MLFLOW})")]


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command("eval-view")(eval_view)
    app.command("models")(models)
    app.command("promote")(promote)
    app.command("rollback")(rollback_command)


def _uri(value: str | None) -> str:
    return value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW


CODING_FIELDS = ["humaneval_plus", "code_timeout_s", "code_memory_mb", "code_workers"]


@config_options((EvalConfig, ["condition", "engine", "max_new_tokens", "limit_per_task", *CODING_FIELDS]))
def evaluate(
    model: Annotated[str, typer.Option(help="checkpoint folder, or models:/NAME@champion / models:/NAME/VERSION")],
    out: Annotated[Path, typer.Option("--out", help="results folder (results.jsonl, summary.json)")],
    eval_data: Annotated[Path | None, typer.Option(help="eval-set root in OpenChat's layout <root>/<task_type>/<task>.jsonl")] = None,
    eval_sets: Annotated[list[str] | None, typer.Option("--eval-sets", help="a task-name prefix (repeat the option for several), e.g. --eval-sets zs/agieval --eval-sets fs_cothub/gsm8k")] = None,
    system: Annotated[str, typer.Option(help="system prompt")] = "",
    heldout: Annotated[Path | None, typer.Option(help="pretokenized held-out Parquet: also report eval/loss and eval/accuracy")] = None,
    mlflow_uri: MlflowUri = None,
    **settings: Any,
) -> None:
    """Evaluate a checkpoint or registered model: generation evals (scored per question) and/or held-out loss.

    Example: openchat eval --model models:/openchat-demo@champion --eval-data data/demo/eval_data --eval-sets demo --out runs/eval

    Coding sets (coding/humaneval) run each extracted program in a sandbox and report pass@1 on
    HumanEval (base) and HumanEval+ (plus) tests; EvalPlus samples go to OUT/evalplus/.
    """
    from openchat_core.registry.store import RegistryError, resolve_model_dir

    if eval_data is None and heldout is None:
        raise fail("nothing to evaluate: give --eval-data (generation evals) and/or --heldout (held-out loss)")
    try:
        model_dir = resolve_model_dir(model, _uri(mlflow_uri) if model.startswith("models:/") else None)
    except (FileNotFoundError, RegistryError) as e:
        raise fail(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    if eval_data is not None:
        from openchat_core.evaluation.coding.scoring import coding_options
        from openchat_core.evaluation.runner import run_generation_eval
        from openchat_core.evaluation.view import load_runs, render_markdown

        coding = {name: settings.pop(name) for name in CODING_FIELDS}
        try:
            result = run_generation_eval(model_dir, eval_data, eval_sets or (), out_dir=out, system=system,
                                         coding=coding_options(coding["humaneval_plus"], coding["code_timeout_s"],
                                                               coding["code_memory_mb"], coding["code_workers"]),
                                         **settings)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise fail(str(e)) from None
        typer.echo(render_markdown(load_runs([out], [model])))
        if result.issues:
            typer.echo(f"{len(result.issues)} eval row(s) skipped; see {out / 'data_issues.jsonl'}")
    if heldout is not None:
        from openchat_core.evaluation.heldout import heldout_metrics

        metrics = heldout_metrics(model_dir, heldout)
        (out / "heldout.json").write_text(json.dumps(metrics, indent=2) + "\n")
        typer.echo(markdown_table([{"metric": k, "value": v} for k, v in metrics.items()]))


def eval_view(results: Annotated[list[Path], typer.Argument(help="result folders (or folders containing them)")]) -> None:
    """Print accuracy and unmatched rate per task type and per task across several eval results."""
    from openchat_core.evaluation.view import load_runs, render_markdown

    typer.echo(render_markdown(load_runs(results)))


def models(name: Annotated[str, typer.Argument(help="registered model name")], mlflow_uri: MlflowUri = None) -> None:
    """List a registered model's versions with aliases, epochs and metrics, and its recent decisions."""
    from openchat_core.registry.store import ModelRegistry

    registry = ModelRegistry(_uri(mlflow_uri), name)
    rows = [{"version": v.version, "aliases": ",".join(v.aliases), "epoch": v.tags.get("openchat.epoch", ""),
             **{k.removeprefix("openchat.metric."): round(float(val), 4) for k, val in v.tags.items() if k.startswith("openchat.metric.")},
             "decision": v.tags.get("openchat.decision", "")} for v in registry.versions()]
    if not rows:
        raise fail(f"no registered model {name!r} in {registry.tracking_uri}")
    typer.echo(markdown_table(rows))
    for d in registry.decisions()[-5:]:
        typer.echo(f"{d['time']} {d['action']} v{d['candidate']}: {d['reason']}")


def promote(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[str, typer.Argument(help="version to promote")],
    metric: Annotated[str, typer.Option(help="compare on this recorded metric")] = "gen/accuracy",
    direction: Annotated[str, typer.Option(help="maximize or minimize")] = "maximize",
    margin: Annotated[float, typer.Option(help="required improvement over the champion")] = 0.0,
    force: Annotated[bool, typer.Option(help="make it champion without comparing (recorded as a manual decision)")] = False,
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "manual promotion",
    mlflow_uri: MlflowUri = None,
) -> None:
    """Promote a version: by the recorded metric (champion moves only if better by the margin), or --force it."""
    from openchat_core.registry.promotion import EVAL_KEY_TAG, manual_promote, promote_candidate
    from openchat_core.registry.store import ModelRegistry, RegistryError

    registry = ModelRegistry(_uri(mlflow_uri), name)
    try:
        if force:
            decision = manual_promote(registry, version, reason)
        else:
            candidate = registry.version(version)
            decision = promote_candidate(registry, candidate, metric, direction, margin, candidate.tags.get(EVAL_KEY_TAG, ""))
    except RegistryError as e:
        raise fail(f"{e} (use --force to decide yourself)") from None
    typer.echo(f"{decision.action}: {decision.reason}")


def rollback_command(
    name: Annotated[str, typer.Argument(help="registered model name")],
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "manual rollback",
    mlflow_uri: MlflowUri = None,
) -> None:
    """Point `champion` back at the previous champion (recorded with the reason)."""
    from openchat_core.registry.promotion import rollback
    from openchat_core.registry.store import ModelRegistry, RegistryError

    try:
        decision = rollback(ModelRegistry(_uri(mlflow_uri), name), reason)
    except RegistryError as e:
        raise fail(str(e)) from None
    typer.echo(decision.reason)
