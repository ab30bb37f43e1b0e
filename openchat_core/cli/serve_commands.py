"""`openchat serve` (run the OpenAI-compatible server) and `openchat deploy` (serve a registered model, start or switch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from openchat_core.cli.eval_commands import MlflowUri, _uri
from openchat_core.cli.output import fail
from openchat_core.markdown import markdown_table
from openchat_core.serving.settings import DEFAULT_PORT


def register(app: typer.Typer) -> None:
    app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)
    app.command("deploy")(deploy)


def serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="checkpoint folder, or models:/NAME@champion / models:/NAME/VERSION")],
    engine: Annotated[str, typer.Option(help="auto (vLLM if the serving env exists), vllm, or transformers")] = "auto",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    mlflow_uri: MlflowUri = None,
) -> None:
    """Serve a model behind the OpenAI-compatible API (/v1/chat/completions, /v1/models, /health, /ready, /metrics).

    Other flags pass through to the server (see `python -m openchat_core.serving --help`), e.g.
    --api-keys sk-1 sk-2 --admin-key ADMIN --log-file openchat.log --log-prompts --served-name openchat_3.5,
    or --lora NAME=PATH (repeated) for more LoRA adapters on the served base; PATH may be models:/NAME@ALIAS.
    Keys can also come from OPENCHAT_API_KEYS / OPENCHAT_ADMIN_KEY (keeps them out of `ps`).

    Example: openchat serve --model models:/openchat-demo@champion --port 18888
    """
    from openchat_core.registry.store import RegistryError, resolve_model_dir
    from openchat_core.serve_env import checkout_env, find_serve_python
    from openchat_core.serving.deploy import DeployError, resolve_engine, serve_python

    try:
        model_dir = resolve_model_dir(model, _uri(mlflow_uri) if model.startswith("models:/") else None)
        python = find_serve_python()  # None: no serving env, so only the transformers engine (this env) can serve
        if python is None and engine == "vllm":
            serve_python()  # raises, saying how to create the serving env
    except (FileNotFoundError, RegistryError, DeployError) as e:
        raise fail(str(e)) from None
    try:
        extra = resolve_lora_args(ctx.args, _uri(mlflow_uri))
    except (FileNotFoundError, RegistryError) as e:
        raise fail(str(e)) from None
    chosen = resolve_engine(engine, python) if python else "transformers"
    args = ["--model", str(model_dir), "--engine", chosen, "--host", host, "--port", str(port), *extra]
    if chosen == "vllm":  # vLLM lives in the serving environment: become that process
        os.execve(str(python), [str(python), "-m", "openchat_core.serving", *args], checkout_env())
    from openchat_core.serving.__main__ import main as serve_main

    sys.exit(serve_main(args))


def resolve_lora_args(args: list[str], mlflow_uri: str | None) -> list[str]:
    """The server's arguments with each `--lora NAME=models:/...` value replaced by the registered adapter's local folder
    (the server runs in the serving env, which has no MLflow); other values pass through unchanged."""
    from openchat_core.registry.store import resolve_model_dir

    def resolved(value: str) -> str:
        name, _, ref = value.partition("=")
        return f"{name}={resolve_model_dir(ref, mlflow_uri)}" if ref.startswith("models:/") else value

    out, in_lora = [], False
    for arg in args:
        if arg.startswith("--lora="):
            arg, in_lora = "--lora=" + resolved(arg.removeprefix("--lora=")), False
        elif arg.startswith("--"):
            in_lora = arg == "--lora"
        elif in_lora:
            arg = resolved(arg)
        out.append(arg)
    return out


def deploy(
    name: Annotated[str, typer.Argument(help="registered model name")],
    alias: Annotated[str, typer.Option(help="which version to serve")] = "champion",
    url: Annotated[str, typer.Option(help="where the server runs (started if nothing answers there)")] = f"http://127.0.0.1:{DEFAULT_PORT}",
    engine: Annotated[str, typer.Option()] = "auto",
    state_dir: Annotated[Path, typer.Option(help="serving state: admin key, server and request logs")] = Path("runs/serving"),
    mlflow_uri: MlflowUri = None,
) -> None:
    """Serve models:/NAME@ALIAS: start the server, or switch the running one with no downtime (smoke-tested first).

    Example: openchat deploy openchat-demo --alias champion
    """
    from openchat_core.registry.deployment import deploy_registered
    from openchat_core.registry.store import RegistryError
    from openchat_core.serving.deploy import DeployError
    from openchat_core.serving.settings import keys_from_env

    keys = keys_from_env()
    try:
        record = deploy_registered(_uri(mlflow_uri), name, alias=alias, url=url, state_dir=state_dir.resolve(), engine=engine, api_keys=keys)
    except (DeployError, RegistryError) as e:
        raise fail(str(e)) from None
    typer.echo(markdown_table([{k: record.get(k) for k in ("served_name", "registry_version", "openai_base_url", "engine", "pid", "unchanged", "reused_engine")}]))
    if record.get("unchanged"):
        typer.echo("the server already serves this version: nothing reloaded")
