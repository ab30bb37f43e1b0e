"""Deploy a registered model: resolve `models:/NAME@alias`, start or switch the server, record where it runs.

The switch itself (load beside the live model, smoke-test, then swap; the old model keeps serving
if anything fails) is the serving app's; this module adds the registry side: which version, and a
record of the deployment on that version (tags) and on the registered model.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from openchat_core.registry.store import ModelRegistry

ADMIN_KEY_FILE = "admin_key"
DEPLOYMENT_TAG = "openchat.deployment"


def ensure_admin_key(state_dir: Path) -> str:
    """The serving admin key: $OPENCHAT_ADMIN_KEY, else one generated once and kept (mode 600) in the serving state folder."""
    if os.environ.get("OPENCHAT_ADMIN_KEY"):
        return os.environ["OPENCHAT_ADMIN_KEY"]
    path = state_dir / ADMIN_KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def live_model(url: str, admin_key: str) -> dict[str, Any] | None:
    """What the server at `url` serves now (None when nothing answers, or it is not ours to ask)."""
    from openchat_core.serving.deploy import admin_status

    status = admin_status(url, admin_key, timeout=5)
    return status.get("model") if status else None


def deploy_registered(tracking_uri: str, model_name: str, *, alias: str = "champion", url: str, state_dir: Path,
                      engine: str = "auto", api_keys: list[str] | None = None, smoke_prompt: str = "Hello",
                      extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Serve the version holding `alias` at `url`; returns (and records) where and how it is served.

    Raises `DeployError` (from the serving layer) with the reason when the model does not come up;
    a server that was already running keeps serving its previous model in that case. When the
    server already serves this very version, nothing is reloaded (`"unchanged": True`).
    """
    from openchat_core.serving.deploy import deploy_model

    registry = ModelRegistry(tracking_uri, model_name)
    info, model_dir = registry.resolve(f"@{alias}")
    keys = list(api_keys or [])
    admin_key = ensure_admin_key(state_dir)
    live = live_model(url, admin_key)
    if live and live.get("served_name") == model_name and live.get("registry_version") == info.version:
        previous = json.loads(registry.registered_tags().get(DEPLOYMENT_TAG, "{}"))
        return {**previous, "url": url.rstrip("/"), "openai_base_url": f"{url.rstrip('/')}/v1", "served_name": model_name,
                "registry_version": info.version, "alias": alias, "unchanged": True}
    handle = deploy_model(url, admin_key, model_dir, served_name=model_name, registry_version=info.version,
                          api_key=keys[0] if keys else None, api_keys=keys, engine=engine, log_path=state_dir / "server.log",
                          request_log=state_dir / "requests.log", smoke_prompt=smoke_prompt, extra_args=extra_args)
    record = {"url": handle.url, "openai_base_url": f"{handle.url}/v1", "served_name": handle.served_model, "registry_version": info.version,
              "alias": alias, "engine": handle.engine, "pid": handle.pid, "started_server": handle.started, "model_dir": str(model_dir),
              "server_log": str(handle.log_path) if handle.log_path else None, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "unchanged": False, "reused_engine": handle.reused_engine}
    registry.set_tags(info.version, {f"{DEPLOYMENT_TAG}.url": handle.url, f"{DEPLOYMENT_TAG}.engine": handle.engine,
                                     f"{DEPLOYMENT_TAG}.time": record["time"], f"{DEPLOYMENT_TAG}.pid": handle.pid})
    registry.client.set_registered_model_tag(model_name, DEPLOYMENT_TAG, json.dumps(record))
    return record
