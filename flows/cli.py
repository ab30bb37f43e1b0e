"""Orchestration commands for the `openchat` CLI, plugged in through the `openchat.commands` entry point."""

from __future__ import annotations

from typing import Annotated

import typer

from openchat_core.cli.output import fail, table


def register(app: typer.Typer) -> None:
    app.command("data")(data)


def data(
    config: Annotated[str, typer.Argument(help="pipeline config YAML, e.g. configs/demo.yaml")] = "configs/demo.yaml",
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. tokenize.workers=2")] = None,
) -> None:
    """Run the data stage flow (validate -> assign weights -> pretokenize) for the config's train and eval data."""
    from openchat_core.config import ConfigError, load_config

    try:
        load_config(config, overrides or [])  # reject a bad config before starting Prefect
    except ConfigError as e:
        raise fail(str(e)) from None
    from flows.data import data_flow

    out = data_flow(config, overrides or [])
    rows = []
    for split_name, split in (("train", out.train), ("eval", out.eval)):
        if split is None:
            continue
        for stage in (split.validated, split.weighted, split.tokens):
            rows.append({"split": split_name, "stage": stage.stage, "cached": stage.cached, "output": stage.path})
    typer.echo(table(rows))
