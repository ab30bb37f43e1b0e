"""Where the serving environment is, and how to start a process in it that runs this checkout's code.

vLLM lives in its own environment (`.venv-serve`, DESIGN.md "Environments"), so the pipeline env
reaches it through a subprocess: evaluation's vLLM worker and the serving app both start that
way. This module is the one place that finds the interpreter and builds the process environment.

Light module: standard library only (the vLLM worker's side imports nothing else either).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from openchat_core.telemetry import without_telemetry

SERVE_PYTHON_ENV = "OPENCHAT_SERVE_PYTHON"


def repo_root() -> Path:
    """The folder holding this `openchat_core` (the repository root for a source checkout)."""
    return Path(__file__).resolve().parents[1]


def find_serve_python() -> Path | None:
    """The serving environment's interpreter, or None when there is none.

    Looked up in order: `$OPENCHAT_SERVE_PYTHON`; `<repo root>/.venv-serve/bin/python`; a
    `.venv-serve` next to the running environment (a git worktree sharing the main checkout's envs).
    """
    explicit = os.environ.get(SERVE_PYTHON_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"${SERVE_PYTHON_ENV}={explicit} does not exist; point it at the serving "
                                    f"environment's python (e.g. .venv-serve/bin/python), or unset it")
        return path
    for candidate in (repo_root() / ".venv-serve" / "bin" / "python", Path(sys.prefix).parent / ".venv-serve" / "bin" / "python"):
        if candidate.is_file():
            return candidate
    return None


def checkout_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a serving-env process: this checkout first on PYTHONPATH (the code that runs is this
    code, not another install), offline hub, telemetry off, no tokenizer thread pools fighting the engine's."""
    env = without_telemetry(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root()), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
