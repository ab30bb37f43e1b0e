"""`openchat demo` (the README's first command): data, the whole pipeline, a served answer, a summary.

Generates the bundled mixed-quality demo data (deterministic; skipped when already there), runs
`openchat-pipeline` with configs/demo.yaml on CPU with embedded Prefect and a sqlite MLflow store,
asks the served champion a question through the official `openai` client, and prints what
happened and where to look next.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from openchat_cli.prefect_env import prepare_prefect_home
from openchat_core.config import load_config
from openchat_core.markdown import markdown_table


def ensure_demo_data(train_file: Path) -> None:
    from openchat_core.data.demo import GENERATOR_VERSION, generate_demo_data

    folder = train_file.parent
    summary = folder / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("generator_version") == GENERATOR_VERSION and train_file.is_file():
        typer.echo(f"[demo] demo data already in {folder}")
        return
    info = generate_demo_data(folder)
    typer.echo(f"[demo] generated demo data in {folder}: {info['expert']} expert + {info['noisy']} noisy conversations, "
               f"{info['malformed_lines']} malformed lines, {info['eval_questions']} held-out questions")


def ask(deployment: dict, question: str, api_key: str | None) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=deployment["openai_base_url"], api_key=api_key or "none", max_retries=2, timeout=60)
    reply = client.chat.completions.create(model=deployment["served_name"], messages=[{"role": "user", "content": question}],
                                           max_tokens=32, temperature=0)
    return reply.choices[0].message.content or ""


def run_demo(config: str, overrides: list[str], question: str) -> None:
    from flows.pipeline import pipeline_flow

    started = time.time()
    cfg = load_config(config, overrides)
    ensure_demo_data(cfg.path(cfg.data.train[0]))
    prepare_prefect_home(cfg)
    typer.echo("[demo] running the pipeline: validate -> weights -> pretokenize -> train -> evaluate -> register -> serve")
    summary = pipeline_flow(config, overrides, deploy=True)
    answer = None
    if summary.deployment:
        keys = cfg.serve.api_keys()
        answer = ask(summary.deployment, question, keys[0] if keys else None)
    elapsed = time.time() - started

    typer.echo("\n" + "=" * 78 + "\nDemo summary\n" + "=" * 78)
    typer.echo(markdown_table([summary.data]))
    typer.echo("\n" + markdown_table(summary.epochs))
    if summary.registration:
        r, d = summary.registration, summary.decision or {}
        typer.echo(f"\nRegistered {cfg.registered_model_name} v{r['version']} (epoch {r['epoch']}, {r['metric']}={r['value']:.3f}); "
                   f"decision: {d.get('action')} - {d.get('reason')}")
    if summary.deployment:
        dep = summary.deployment
        typer.echo(f"\nServing {dep['served_name']} (v{dep['registry_version']}, alias {dep['alias']}) at {dep['openai_base_url']} "
                   f"with the {dep['engine']} engine")
        typer.echo(f"Q: {question}\nA: {answer!r}")
        typer.echo(f"Try: curl {dep['url']}/v1/chat/completions -H 'Content-Type: application/json' "
                   f"-d '{{\"model\": \"{dep['served_name']}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Add 2 and 5\"}}]}}'")
        typer.echo(f"Stop the server: kill {dep.get('pid')}")
    typer.echo(f"\nMLflow store: {summary.mlflow.get('tracking uri')}  (experiment {summary.mlflow.get('experiment')})")
    typer.echo("Open the UIs: .venv/bin/openchat up   -> Prefect http://127.0.0.1:4200, MLflow http://127.0.0.1:5000")
    typer.echo(f"Done in {elapsed / 60:.1f} min.")
