"""The `openchat` command: one subcommand per stage.

Stage commands (validate, assign-weights, pretokenize, train, eval, serve, ...) live here and call
`openchat_core` directly. Orchestration commands (run, demo, up, deploy) belong to the Prefect
layer, which openchat_core must not import; they are plugged in through the `openchat.commands`
entry point group (registered by this project's pyproject for `openchat_cli.commands`), so the
dependency points from the orchestration layer to core and never back.
"""

from __future__ import annotations

import importlib.metadata

import typer

from openchat_core.cli import data_commands, eval_commands, serve_commands, train_commands


def build_app() -> typer.Typer:
    app = typer.Typer(name="openchat", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      help="OpenChat's C-RLFT training system as a pipeline: data, training, evaluation, registry, serving.")
    data_commands.register(app)
    train_commands.register(app)
    eval_commands.register(app)
    serve_commands.register(app)
    for entry_point in importlib.metadata.entry_points(group="openchat.commands"):
        entry_point.load()(app)
    return app


def main() -> None:
    import os

    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: before MLflow, Prefect or the hub client is imported
    build_app()()
