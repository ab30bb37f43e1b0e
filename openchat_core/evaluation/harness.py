"""lm-evaluation-harness against a served model: the same command a user runs against `openchat serve`.

lm-eval runs in its own process (`python -m lm_eval run --model local-completions ...`): it
imports torch, datasets and transformers, reads the API key only from `OPENAI_API_KEY`, and sets
up logging globally, none of which belongs in the caller's process. The child gets the key and
the offline switches in its environment; its results and per-sample logs are read back from
`--output_path`.

- `local-completions` sends token ids to `/v1/completions` (echo + logprobs for multiple-choice
  tasks, plain generation otherwise) and tokenizes through the server's `/tokenize` (the remote
  tokenizer), so the ids are exactly the served model's.
- `local-chat-completions` sends each prompt as a user message to `/v1/chat/completions`, which
  applies the OpenChat template; it can only run generation tasks.

Metrics come back flat, as `harness/<task>/<metric>` (plus `_<filter>` when a task's filter is
not "none"), ready for MLflow and for `eval.primary_metric`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HARNESS_PREFIX = "harness"
MODELS = ("local-completions", "local-chat-completions")


class HarnessError(RuntimeError):
    """lm-eval failed or wrote no results; the message has the tail of its output."""


@dataclass
class HarnessResult:
    metrics: dict[str, float]
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    output_dir: Path | None = None


def harness_command(base_url: str, model_name: str, tasks: Sequence[str], output_dir: Path, *,
                    model: str = "local-completions", include_paths: Sequence[Path] = (), limit: int | None = None,
                    api_key: str | None = None, num_concurrent: int = 1) -> list[str]:
    """The lm-eval command line (also what the README shows)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    route = "chat/completions" if model == "local-chat-completions" else "completions"
    args = [f"base_url={base_url.rstrip('/')}/v1/{route}", f"model={model_name}", f"num_concurrent={num_concurrent}",
            "max_retries=1", "timeout=300"]
    if model == "local-completions":
        args += ["tokenizer_backend=remote", "tokenized_requests=True"]
        if api_key:
            args.append(f"auth_token={api_key}")  # the remote tokenizer's own requests
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args", ",".join(args),
           "--tasks", ",".join(tasks), "--output_path", str(output_dir), "--log_samples", "--seed", "1234"]
    for path in include_paths:
        cmd += ["--include_path", str(path)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if model == "local-chat-completions":
        cmd.append("--apply_chat_template")
    return cmd


def harness_metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's `results` block as `harness/<task>/<metric>` floats (stderrs and bookkeeping left out)."""
    metrics: dict[str, float] = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, comma, filter_name = key.partition(",")
            if not comma or "_stderr" in metric or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # scores are "<metric>,<filter>"; "alias", "sample_len" and stderrs are not
            name = metric if filter_name in ("", "none") else f"{metric}_{filter_name}"
            metrics[f"{HARNESS_PREFIX}/{task}/{name}"] = float(value)
    return metrics


def run_harness(base_url: str, model_name: str, tasks: Sequence[str], output_dir: Path, *,
                model: str = "local-completions", include_paths: Sequence[Path] = (), limit: int | None = None,
                api_key: str | None = None, timeout_s: float = 1800.0) -> HarnessResult:
    """Run lm-eval's `tasks` against the server at `base_url`; raises `HarnessError` with its output on failure."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = harness_command(base_url, model_name, tasks, output_dir, model=model, include_paths=include_paths,
                          limit=limit, api_key=api_key)
    env = {**os.environ, "OPENAI_API_KEY": api_key or "EMPTY", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"lm-eval did not finish within {timeout_s:g} s ({' '.join(tasks)})") from exc
    results_files = sorted(output_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not results_files:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise HarnessError(f"lm-eval failed (exit {proc.returncode}) on {', '.join(tasks)} against {base_url}:\n{tail}")
    results = json.loads(results_files[-1].read_text())
    samples: dict[str, list[dict[str, Any]]] = {}
    for task in results.get("results", {}):
        files = sorted(results_files[-1].parent.glob(f"samples_{task}_*.jsonl"), key=lambda p: p.stat().st_mtime)
        if files:
            samples[task] = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return HarnessResult(harness_metrics(results), results, samples, results_files[-1].parent)


def evaluate_served(checkpoint: str | Path, tasks: Sequence[str], out_dir: Path, *, model: str = "local-completions",
                    include_paths: Sequence[Path] = (), limit: int | None = None, engine: str = "auto",
                    ready_timeout_s: float = 600.0) -> HarnessResult:
    """Serve `checkpoint` on a temporary loopback port (a fresh key), run lm-eval's `tasks` against it, stop it.

    The candidate is evaluated exactly as it will be served (same app, template, engine), which is
    what a promotion gate should measure.
    """
    import secrets

    from openchat_core.ports import free_port
    from openchat_core.serving.deploy import deploy_model, stop_server

    out_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    handle = deploy_model(f"http://127.0.0.1:{free_port()}", None, checkpoint, served_name="candidate",
                          api_key=key, engine=engine, log_path=out_dir / "server.log", ready_timeout_s=ready_timeout_s)
    try:
        return run_harness(handle.url, "candidate", tasks, out_dir / "lm_eval", model=model,
                           include_paths=include_paths, limit=limit, api_key=key)
    finally:
        stop_server(handle.pid)
