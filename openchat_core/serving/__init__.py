"""Serving: an OpenAI-compatible FastAPI app for OpenChat models, on vLLM or transformers.

Public API (imported lazily, so `import openchat_core.serving` pulls in neither FastAPI nor torch):
- `ServeSettings`, `settings_from_args(argv)`: the server settings and the CLI built from them.
- `build_app(settings) -> FastAPI`: the app factory (engine lifecycle in its lifespan).
- `serve(settings)`: run it under uvicorn (`python -m openchat_core.serving` does this).
- `deploy_model(url, admin_key, model_dir, ...)`: start a server or switch a running one to a new
  checkpoint, with a health check and a smoke completion; returns where it runs.

Modules: settings, protocol (pydantic API models), errors, auth, metrics, request_log, engines/
(base interface, vllm_engine, transformers_engine, text), runtime (live model + switch), chat
(the completions route), app (factory + routes), server, deploy.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ServeSettings": "openchat_core.serving.settings",
    "settings_from_args": "openchat_core.serving.settings",
    "build_app": "openchat_core.serving.app",
    "serve": "openchat_core.serving.server",
    "deploy_model": "openchat_core.serving.deploy",
    "DeployError": "openchat_core.serving.deploy",
    "ServerHandle": "openchat_core.serving.deploy",
    "stop_server": "openchat_core.serving.deploy",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openchat_core.serving' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
