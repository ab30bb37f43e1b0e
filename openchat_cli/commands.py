"""Orchestration commands for the `openchat` CLI, plugged in through the `openchat.commands` entry point.

    openchat run CONFIG [overrides]     the pipeline (or one stage with --only) as a Prefect flow run
    openchat demo                       demo data + the whole pipeline + a question to the served model
    openchat up                         Prefect server + worker + deployments and an MLflow server, on loopback

Without PREFECT_API_URL, flows run on Prefect's embedded (ephemeral) server whose database lives
under the storage root (`<root>/prefect`), so `openchat up` later shows the same runs in the UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openchat_cli.prefect_env import prepare_prefect_home
from openchat_core.cli.output import fail
from openchat_core.markdown import markdown_table

STAGES = ("pipeline", "data", "train", "evaluate")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("data")(data)
    app.command("demo")(demo)
    app.command("up")(up)


def _load(config: str, overrides: list[str] | None):
    from openchat_core.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])  # reject a bad config before starting anything
    except ConfigError as e:
        raise fail(str(e)) from None


def run(
    config: Annotated[str, typer.Argument(help="pipeline config YAML, e.g. configs/demo.yaml")] = "configs/demo.yaml",
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.epochs=5")] = None,
    only: Annotated[str, typer.Option(help=f"run one stage flow: {', '.join(STAGES)}")] = "pipeline",
    deploy: Annotated[bool | None, typer.Option("--deploy/--no-deploy", help="serve the champion (default: serve.enabled)")] = None,
    skip_if_unchanged: Annotated[bool, typer.Option(help="do nothing if data and config are unchanged since the last success")] = False,
) -> None:
    """Run the pipeline (or one stage) for a config as a Prefect flow run, tracked in MLflow.

    Example: openchat run configs/demo.yaml train.epochs=4 --no-deploy
    """
    if only not in STAGES:
        raise fail(f"--only must be one of {', '.join(STAGES)}")
    cfg = _load(config, overrides)
    prepare_prefect_home(cfg)
    if only == "data":
        data(config, overrides)
        return
    if only == "train":
        from flows.train import train_flow

        out = train_flow(config, overrides or [])
        typer.echo(markdown_table([{"epoch": c.epoch, **{k: round(v, 4) for k, v in c.metrics.items()}, "checkpoint": c.path} for c in out.checkpoints]))
        return
    if only == "evaluate":
        from flows.evaluate import evaluate_and_promote_flow

        result = evaluate_and_promote_flow(config, overrides or [])
        typer.echo(f"v{result.registration.version}: {result.decision['action']} - {result.decision['reason']}")
        return
    from flows.pipeline import pipeline_flow

    summary = pipeline_flow(config, overrides or [], deploy=deploy, skip_if_unchanged=skip_if_unchanged)
    typer.echo(summary.markdown())


def data(
    config: Annotated[str, typer.Argument(help="pipeline config YAML, e.g. configs/demo.yaml")] = "configs/demo.yaml",
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. tokenize.workers=2")] = None,
) -> None:
    """Run the data stage flow (validate -> mix -> assign weights -> pretokenize) for the config's train and eval data."""
    cfg = _load(config, overrides)
    prepare_prefect_home(cfg)
    from flows.data import data_flow

    out = data_flow(config, overrides or [])
    rows = []
    for split_name, split in (("train", out.train), ("eval", out.eval)):
        if split is None:
            continue
        for stage in (split.validated, split.mixed, split.weighted, split.tokens):
            rows.append({"split": split_name, "stage": stage.stage, "cached": stage.cached, "output": stage.path})
    typer.echo(markdown_table(rows))


def demo(
    config: Annotated[str, typer.Option(help="the demo config")] = "configs/demo.yaml",
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
    question: Annotated[str, typer.Option(help="what to ask the served model")] = "Count the items: q w e r",
) -> None:
    """The demo: generate the bundled mixed-quality data, run the whole pipeline on CPU, ask the served model a question."""
    from openchat_cli.demo import run_demo

    run_demo(config, overrides or [], question)


def up(
    storage_root: Annotated[str, typer.Option(help="storage root of the runs to show (Prefect and MLflow databases)")] = "runs",
    prefect_port: Annotated[int, typer.Option()] = 4200,
    mlflow_port: Annotated[int, typer.Option()] = 5000,
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy", help="register prefect.yaml's deployments and start a worker")] = True,
) -> None:
    """Start a Prefect server (+ process worker and deployments) and an MLflow server on loopback, until Ctrl-C."""
    from openchat_cli.services import run_services

    run_services(Path(storage_root), prefect_port, mlflow_port, deploy)
