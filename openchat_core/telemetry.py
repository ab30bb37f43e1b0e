"""Usage telemetry off, for every process this project starts: the one place that names the switches.

The project promises no network at run time except loopback, but MLflow 3, vLLM, Ray and the
Hugging Face hub client report usage by default, and Prefect's server sends analytics. Each reads
its switch from the environment when it is imported or started, so the switches are applied where
processes start (the CLI entry, the trainer launcher, serving and evaluation subprocesses,
`openchat up`, the test session, the benchmarks), never by library code mutating `os.environ`.

Opting back in: set `OPENCHAT_TELEMETRY=on` (none of these defaults is applied), or set one
variable yourself (e.g. `MLFLOW_DISABLE_TELEMETRY=false`): a value already in the environment is kept.

Light module: standard library only (the serving environment imports it too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OPT_IN_ENV = "OPENCHAT_TELEMETRY"

# variable -> value that turns the reporting off
TELEMETRY_OFF: Mapping[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3 (mlflow.telemetry); also honours DO_NOT_TRACK=true
    "VLLM_NO_USAGE_STATS": "1",  # vLLM's usage_lib
    "VLLM_DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray (OpenChat's reference code and the benchmarks start Ray)
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # Prefect's server (also avoids a harmless sqlite-locked traceback)
    "DO_NOT_TRACK": "1",  # the cross-tool convention (https://consoledonottrack.com)
}


def telemetry_opted_in(environ: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(OPT_IN_ENV, "")
    return value.strip().lower() in ("1", "on", "true", "yes")


def telemetry_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The switches to add to `environ` (default: this process's): none when opted in, and never one already set."""
    env = os.environ if environ is None else environ
    if telemetry_opted_in(env):
        return {}
    return {name: value for name, value in TELEMETRY_OFF.items() if name not in env}


def without_telemetry(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) with telemetry off: the environment for a child process."""
    env = dict(os.environ if environ is None else environ)
    env.update(telemetry_defaults(env))
    return env
